"""git inside a mount (issue 9): a repository works as on a local disk.

git writes objects with link() and falls back to rename() when link() fails
(fencefs refuses hard links with EPERM), and renames its lock files over the
index and refs: both are ordinary fenced commits.
"""

from __future__ import annotations

import os

from tests.compat.programs import need, read, sh
from tests.support.mount import Mount

GIT_ENV = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com",
           "GIT_CONFIG_NOSYSTEM": "1", "HOME": "/nonexistent"}


def test_git_init_add_commit_status_gc_log(mount: Mount) -> None:
    need("git")
    repo = mount.path("repo")
    os.mkdir(repo)
    git = lambda script: sh(script, repo, env=GIT_ENV)  # noqa: E731
    git("git init -q -b main . && printf 'one\\n' > a.txt && mkdir -p src && "
        "printf 'print(1)\\n' > src/m.py && git add . && git commit -q -m first")
    git("printf 'two\\n' >> a.txt && git rm -q src/m.py && printf 'b\\n' > b.txt && "
        "git add -A && git commit -q -m second")
    assert git("git status --porcelain").stdout == ""
    git("git gc -q && git fsck --strict --no-progress")
    assert git("git log --format=%s").stdout == "second\nfirst\n"
    assert git("git count-objects -v").stdout.splitlines()[0] == "count: 0"  # all packed
    assert git("git status --porcelain").stdout == ""
    assert git("git show HEAD:a.txt").stdout == "one\ntwo\n"
    # A local clone hard-links objects where it can; here it copies them.
    git("git clone -q . ../clone")
    assert read(mount.path("clone/a.txt")) == "one\ntwo\n"
    assert sh("git log --oneline | wc -l", mount.path("clone"), env=GIT_ENV).stdout.strip() == "2"


def test_git_checkout_and_branches(mount: Mount) -> None:
    need("git")
    repo = mount.path("repo")
    os.mkdir(repo)
    git = lambda script: sh(script, repo, env=GIT_ENV)  # noqa: E731
    git("git init -q -b main . && echo base > f && git add f && git commit -q -m base && "
        "git checkout -q -b topic && echo topic > f && git commit -q -am topic && "
        "git checkout -q main && git merge -q --no-edit topic")
    assert read(mount.path("repo/f")) == "topic\n"
    assert git("git status --porcelain").stdout == ""
