"""Everyday shell tools inside a mount (issue 9): their ordinary results.

Each test runs the real program in a fresh mount and checks what a user
would check on a local filesystem. docs/compatibility.md is the table of
these results.
"""

from __future__ import annotations

import ctypes
import errno
import os
import subprocess

import pytest

from tests.compat.programs import (
    first_of,
    make_source_tree,
    need,
    read,
    read_bytes,
    sh,
    tree,
    version,
)
from tests.support.agent import run_agent
from tests.support.mount import Mount

# -- in-place editors: a temporary file renamed over the target --------------


def test_sed_in_place(mount: Mount) -> None:
    need("sed")
    path = mount.seed("plan.md", "- step one\n- step two\n")
    sh("sed -i 's/two/2/' plan.md && sed -i -e '1i # plan' plan.md", mount.mnt)
    assert read(path) == "# plan\n- step one\n- step 2\n"
    assert version(path) == 3
    assert sorted(os.listdir(mount.mnt)) == [".fencefs", "plan.md"]  # sed's temp file is gone


def test_perl_pi(mount: Mount) -> None:
    need("perl")
    path = mount.seed("notes.txt", "alpha\nbeta\n")
    sh("perl -pi -e 's/beta/BETA/' notes.txt && perl -i.bak -pe 's/alpha/ALPHA/' notes.txt",
       mount.mnt)
    assert read(path) == "ALPHA\nBETA\n"
    assert read(mount.path("notes.txt.bak")) == "alpha\nBETA\n"


def test_vim_es(mount: Mount) -> None:
    vim = first_of("vim", "vim.tiny")
    path = mount.seed("todo.md", "one\ntwo\nthree\n")
    sh(f"{vim} -es -u NONE -i NONE -c '%s/two/TWO/' -c 'wq' todo.md", mount.mnt)
    assert read(path) == "one\nTWO\nthree\n"
    assert sorted(os.listdir(mount.mnt)) == [".fencefs", "todo.md"]  # no swap, no backup


def test_ex(mount: Mount) -> None:
    need("ex")
    path = mount.seed("todo.md", "one\ntwo\nthree\n")
    sh("ex -s -u NONE -i NONE -c '1d' -c '%s/three/3/' -c 'x' todo.md", mount.mnt)
    assert read(path) == "two\n3\n"


def test_jq_into_a_temp_file_then_mv(mount: Mount) -> None:
    need("jq")
    path = mount.seed("state.json", '{"done": [1], "todo": [2, 3]}\n')
    sh("jq '.done += [2] | .todo -= [2]' state.json > state.json.tmp && mv state.json.tmp "
       "state.json", mount.mnt)
    assert sh("jq -c . state.json", mount.mnt).stdout == '{"done":[1,2],"todo":[3]}\n'
    assert version(path) == 2


# -- copying trees: contents, modes, times, links -----------------------------


def test_cp_a(mount: Mount, tmp_path) -> None:  # type: ignore[no-untyped-def]
    need("cp")
    src = make_source_tree(tmp_path)
    sh(f"cp -a {src} dst && cp -a dst dst2", mount.mnt)
    assert tree(mount.path("dst")) == tree(src)
    assert tree(mount.path("dst2")) == tree(src)


def test_tar_x(mount: Mount, tmp_path) -> None:  # type: ignore[no-untyped-def]
    need("tar")
    src = make_source_tree(tmp_path)
    sh(f"tar -C {src} -cf {tmp_path}/src.tar . && mkdir out && tar -C out -xf {tmp_path}/src.tar",
       mount.mnt)
    # tar's default format keeps times to the second.
    assert tree(mount.path("out"), tick=10**9) == tree(src, tick=10**9)


def test_rsync_a(mount: Mount, tmp_path) -> None:  # type: ignore[no-untyped-def]
    need("rsync")
    src = make_source_tree(tmp_path)
    sh(f"rsync -a {src}/ rs/", mount.mnt)
    assert tree(mount.path("rs")) == tree(src)
    # An update: rsync writes a temporary file and renames it over the old one.
    (src / "README.md").write_text("# readme, longer now\n")
    os.utime(src / "README.md", ns=(1_700_000_000_000_000_000, 1_700_000_000_000_000_000))
    sh(f"rsync -a {src}/ rs/", mount.mnt)
    assert tree(mount.path("rs"), dir_times=False) == tree(src, dir_times=False)
    assert version(mount.path("rs/README.md")) == 2


# -- small in-place changes ---------------------------------------------------


def test_dd_conv_notrunc_into_the_middle(mount: Mount) -> None:
    need("dd")
    path = mount.seed("blob.bin", "0123456789")
    sh("printf XY | dd of=blob.bin bs=1 seek=4 conv=notrunc status=none", mount.mnt)
    assert read(path) == "0123XY6789"


def test_truncate_s(mount: Mount) -> None:
    need("truncate")
    path = mount.seed("log.txt", "0123456789")
    sh("truncate -s 4 log.txt", mount.mnt)
    assert read_bytes(path) == b"0123"
    sh("truncate -s 6 log.txt && truncate -s +2 log.txt", mount.mnt)
    assert read_bytes(path) == b"0123" + b"\0" * 4


def test_ln_s(mount: Mount) -> None:
    need("ln")
    mount.seed("target.md", "here\n")
    os.mkdir(mount.path("d"))
    sh("ln -s target.md link.md && ln -s ../target.md d/up.md && cat link.md d/up.md",
       mount.mnt)
    assert os.readlink(mount.path("link.md")) == "target.md"
    assert read(mount.path("d/up.md")) == "here\n"


def test_chmod(mount: Mount) -> None:
    need("chmod")
    path = mount.seed("run.sh", "#!/bin/sh\necho hi\n")
    sh("chmod +x run.sh && ./run.sh && chmod 0640 run.sh", mount.mnt)
    assert oct(os.stat(path).st_mode & 0o7777) == oct(0o640)
    sh("echo more >> run.sh", mount.mnt)  # a commit keeps the mode
    assert oct(os.stat(path).st_mode & 0o7777) == oct(0o640)


def test_touch_d(mount: Mount) -> None:
    need("touch")
    path = mount.seed("old.txt", "x")
    before = version(path)
    sh("touch -d '2001-02-03 04:05:06 UTC' old.txt && touch new.txt", mount.mnt)
    assert os.stat(path).st_mtime == 981173106
    assert version(path) == before  # times are metadata, no commit
    assert os.path.getsize(mount.path("new.txt")) == 0


def test_find_exec(mount: Mount) -> None:
    need("find", "sed")
    os.makedirs(mount.path("a/b"))
    for name in ("a/one.txt", "a/b/two.txt", "a/b/keep.md"):
        mount.seed(name, "status: open\n")
    sh("find . -name '*.txt' -exec sed -i 's/open/done/' {} + && "
       "find . -type f -name '*.md' -exec chmod 600 {} \\;", mount.mnt)
    assert read(mount.path("a/one.txt")) == "status: done\n"
    assert read(mount.path("a/b/two.txt")) == "status: done\n"
    assert read(mount.path("a/b/keep.md")) == "status: open\n"
    assert os.stat(mount.path("a/b/keep.md")).st_mode & 0o777 == 0o600


# -- concurrent appends --------------------------------------------------------

APPENDERS = 4
LINES = 150


def _append_from_shells(mount: Mount, name: str) -> None:
    script = (f"for s in $(seq 1 {APPENDERS}); do (for i in $(seq 1 {LINES}); do "
              f"echo \"shell$s line $i $(printf '%060d' $i)\" >> {name}; done) & done; wait")
    sh(script, mount.mnt)
    lines = read(mount.path(name)).splitlines()
    assert len(lines) == APPENDERS * LINES
    expected = {f"shell{s} line {i} {i:060d}" for s in range(1, APPENDERS + 1)
                for i in range(1, LINES + 1)}
    assert set(lines) == expected  # every line whole, none lost
    for s in range(1, APPENDERS + 1):  # and each shell's lines in its order
        mine = [int(line.split()[2]) for line in lines if line.startswith(f"shell{s} ")]
        assert mine == sorted(mine)


def test_concurrent_appends_from_four_shells(mount: Mount) -> None:
    _append_from_shells(mount, "agents.log")
    assert version(mount.path("agents.log")) == APPENDERS * LINES  # one commit each


def test_concurrent_appends_to_a_shared_file(make_mount) -> None:  # type: ignore[no-untyped-def]
    mount = make_mount("--shared-glob", "*.log")
    _append_from_shells(mount, "agents.log")


# -- refused, on purpose --------------------------------------------------------


def test_hard_links_are_refused_with_eperm(mount: Mount) -> None:
    mount.seed("a.txt", "x")
    result = subprocess.run(["ln", "a.txt", "b.txt"], cwd=mount.mnt, capture_output=True,
                            text=True)
    assert result.returncode != 0 and "Operation not permitted" in result.stderr
    with pytest.raises(OSError) as info:
        os.link(mount.path("a.txt"), mount.path("b.txt"))
    assert info.value.errno == errno.EPERM


def test_rename_exchange_is_refused_with_einval(mount: Mount) -> None:
    a, b = mount.seed("a.txt", "A"), mount.seed("b.txt", "B")
    libc = ctypes.CDLL(None, use_errno=True)
    rename_exchange, at_fdcwd = 2, -100
    rc = libc.renameat2(at_fdcwd, a.encode(), at_fdcwd, b.encode(), rename_exchange)
    assert rc == -1 and ctypes.get_errno() == errno.EINVAL
    assert (read(a), read(b)) == ("A", "B")


def test_ln_s_absolute_and_climbing_targets(mount: Mount) -> None:
    """Any target, as on ext4 (issue 17; EPERM before)."""
    sh("ln -s /etc/hostname abs && ln -s ../../../etc/hostname up", mount.mnt)
    with open("/etc/hostname") as f:
        expected = f.read()
    assert read(mount.path("abs")) == expected
    assert os.readlink(mount.path("up")) == "../../../etc/hostname"


def test_cp_a_copies_the_policy_and_nothing_else(mount: Mount) -> None:
    """cp -a copies user.* attributes: of fencefs's, only the policy can be
    set; the others are refused (EINVAL), which cp ignores."""
    path = mount.seed("plan.md", "x")
    os.setxattr(path, "user.fencefs.policy", b"exclusive")
    os.setxattr(path, "user.note", b"mine")
    sh("cp -a plan.md copy.md", mount.mnt)
    copy = mount.path("copy.md")
    assert os.getxattr(copy, "user.fencefs.policy") == b"exclusive"
    assert os.getxattr(copy, "user.note") == b"mine"
    assert version(copy) == 1
    out = run_agent([["setxattr", copy, "user.fencefs.version", "7"]], python="python3")
    assert out == [{"err": errno.errorcode[errno.EINVAL], "stage": "setxattr"}]
