"""Multi-file commits and snapshots on a real mount, driven by real processes.

Shell agents stage files under MOUNT/.fencefs/txn/NAME and commit with
setfattr; snapshots are taken with the root's control attribute (what the
CLI does). Every check looks at what the files, the journal and the errno
say, never at how long something took.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from tests.support.mount import Mount

COMMIT = "user.fencefs.commit"


def sh(script: str, *, agent: str = "a", check: bool = True,
       timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "FENCEFS_AGENT": agent}
    proc = subprocess.run(["bash", "-c", script], capture_output=True, text=True,
                          env=env, timeout=timeout)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def staging(m: Mount, name: str) -> Path:
    return m.mnt / ".fencefs" / "txn" / name


def commit_errno(path: Path, agent: str = "a") -> int:
    """The errno of a commit made by a process of ``agent``."""
    code = ("import os, sys\ntry:\n    os.setxattr(sys.argv[1], sys.argv[2], b'1')\n"
            "except OSError as e:\n    print(e.errno)\nelse:\n    print(0)")
    proc = subprocess.run(["python3", "-c", code, str(path), COMMIT], capture_output=True,
                          text=True, env={**os.environ, "FENCEFS_AGENT": agent}, timeout=60)
    return int(proc.stdout)


def result(path: Path) -> str:
    return os.getxattr(path, "user.fencefs.result").decode()


def version(m: Mount, name: str) -> int:
    return int(os.getxattr(m.path(name), "user.fencefs.version"))


def events(m: Mount, kind: str) -> list[dict[str, object]]:
    return [e for e in m.journal() if e["event"] == kind]


def test_shell_transaction_commits_all(mount: Mount) -> None:
    mount.seed("plan.md", "plan 0\n")
    mount.seed("results.json", "[]\n")
    sh(f"""
        cd {mount.mnt}
        mkdir .fencefs/txn/step1
        cat plan.md > /dev/null; cat results.json > /dev/null
        echo 'plan 1' > .fencefs/txn/step1/plan.md
        echo '[1]' > .fencefs/txn/step1/results.json
        mkdir -p .fencefs/txn/step1/notes && echo 'new' > .fencefs/txn/step1/notes/new.md
        setfattr -n user.fencefs.commit -v 1 .fencefs/txn/step1
    """)
    assert Path(mount.path("plan.md")).read_text() == "plan 1\n"
    assert Path(mount.path("results.json")).read_text() == "[1]\n"
    assert Path(mount.path("notes/new.md")).read_text() == "new\n"
    assert (version(mount, "plan.md"), version(mount, "results.json")) == (2, 2)
    assert os.listdir(staging(mount, "step1")) == []  # the directory holds nothing
    intent = events(mount, "txn-intent")[-1]
    assert sorted(m["file"] for m in intent["members"]) == [  # type: ignore[attr-defined]
        "notes/new.md", "plan.md", "results.json"]
    assert events(mount, "txn-commit")[-1]["txn"] == intent["txn"]


def test_stale_member_refuses_all_and_keeps_drafts(mount: Mount) -> None:
    mount.seed("plan.md", "plan 0\n")
    mount.seed("results.json", "[]\n")
    sh(f"""
        cd {mount.mnt}; mkdir .fencefs/txn/t
        cat plan.md results.json > /dev/null
        echo 'plan A' > .fencefs/txn/t/plan.md
        echo '[A]' > .fencefs/txn/t/results.json
    """, agent="a")
    sh(f"cd {mount.mnt}; cat results.json >/dev/null; echo '[B]' > results.json", agent="b")
    rejected_before = len(mount.rejected())
    env_a = {**os.environ, "FENCEFS_AGENT": "a"}
    proc = subprocess.run(["setfattr", "-n", COMMIT, "-v", "1",
                           str(staging(mount, "t"))], env=env_a, capture_output=True, text=True)
    # The daemon answers EAGAIN; this kernel hands a setxattr's EAGAIN to the
    # caller as EOPNOTSUPP, so the answer is also kept as user.fencefs.result.
    assert proc.returncode != 0
    assert result(staging(mount, "t")) == "EAGAIN conflict moved=results.json"
    # nothing of A landed, not even the member that did not move
    assert Path(mount.path("plan.md")).read_text() == "plan 0\n"
    assert Path(mount.path("results.json")).read_text() == "[B]\n"
    assert len(mount.rejected()) == rejected_before + 2
    refused = events(mount, "txn-refused")[-1]
    assert refused["moved"] == ["results.json"] and refused["reason"] == "conflict"
    assert os.listdir(staging(mount, "t")) == []


def test_reclaim_fences_transaction_with_estale(mount: Mount) -> None:
    mount.seed("a.txt", "a\n")
    mount.seed("b.txt", "b\n")
    sh(f"""cd {mount.mnt}; mkdir .fencefs/txn/z; cat a.txt b.txt >/dev/null
           echo A > .fencefs/txn/z/a.txt; echo B > .fencefs/txn/z/b.txt""", agent="z")
    os.setxattr(mount.path("b.txt"), "user.fencefs.reclaim", b"1")
    assert commit_errno(staging(mount, "z"), "z") == errno.ESTALE
    assert result(staging(mount, "z")) == "ESTALE fenced moved=b.txt"
    assert Path(mount.path("a.txt")).read_text() == "a\n"


def test_delete_list_and_bad_input(mount: Mount) -> None:
    mount.seed("keep.md", "k\n")
    mount.seed("old.md", "o\n")
    os.mkdir(mount.path("adir"))
    root = staging(mount, "d")
    sh(f"mkdir {root}")
    cases = [
        ("adir", "a directory as a member"),
        ("../../etc/passwd", "outside the mount"),
        (".fencefs/journal.jsonl", "inside .fencefs"),
        ("nope.md", "a delete of nothing"),
    ]
    for line, why in cases:
        sh(f"echo '{line}' > {root}/.fencefs-delete")
        assert sh(f"setfattr -n {COMMIT} -v 1 {root}", check=False).returncode != 0, why
        assert commit_errno(root) == errno.EINVAL, why
    sh(f"ln -s keep.md {root}/link.md; rm {root}/.fencefs-delete")
    assert commit_errno(root) == errno.EINVAL  # a symlink as a member
    sh(f"rm {root}/link.md")
    assert commit_errno(root) == errno.EINVAL  # nothing staged
    assert Path(mount.path("old.md")).read_text() == "o\n"  # nothing changed
    assert len(events(mount, "txn-invalid")) == 10  # each case twice, then two more
    sh(f"""echo old.md > {root}/.fencefs-delete; echo K2 > {root}/keep.md
           setfattr -n {COMMIT} -v 1 {root}""")
    assert not os.path.exists(mount.path("old.md"))
    assert Path(mount.path("keep.md")).read_text() == "K2\n"


def test_only_the_staging_identity_commits(mount: Mount) -> None:
    mount.seed("f.md", "0\n")
    sh(f"mkdir {staging(mount, 'own')}; echo 1 > {staging(mount, 'own')}/f.md", agent="a")
    proc = sh(f"setfattr -n {COMMIT} -v 1 {staging(mount, 'own')}", agent="b", check=False)
    assert "Operation not permitted" in proc.stderr
    assert Path(mount.path("f.md")).read_text() == "0\n"
    sh(f"setfattr -n {COMMIT} -v 1 {staging(mount, 'own')}", agent="a")
    assert Path(mount.path("f.md")).read_text() == "1\n"


def test_killed_staging_writer_never_commits(mount: Mount) -> None:
    """G7: a writer of the staging directory killed mid-write poisons it."""
    mount.seed("f.md", "0\n")
    mount.seed("g.md", "0\n")
    root = staging(mount, "k")
    sh(f"mkdir {root}; echo 1 > {root}/g.md", agent="k")
    writer = subprocess.Popen(
        ["python3", "-c", "import sys,os,time\n"
         "f=open(sys.argv[1],'w'); f.write('partial'); f.flush(); print('ready',flush=True)\n"
         "time.sleep(60)", f"{root}/f.md"],
        env={**os.environ, "FENCEFS_AGENT": "k"}, stdout=subprocess.PIPE, text=True)
    assert writer.stdout is not None and writer.stdout.readline() == "ready\n"
    writer.kill()
    writer.wait()
    writer.stdout.close()
    proc = sh(f"setfattr -n {COMMIT} -v 1 {root}", agent="k", check=False)
    assert "Operation canceled" in proc.stderr
    assert (Path(mount.path("f.md")).read_text(), Path(mount.path("g.md")).read_text()) == (
        "0\n", "0\n")
    assert any(e.get("reason") == "killed" for e in events(mount, "txn-refused"))


def snapshot(m: Mount, name: str, under: str = "") -> None:
    value = name + (f"\n{under}" if under else "")
    os.setxattr(str(m.mnt), "user.fencefs.snapshot-create", value.encode())


def test_snapshot_view_list_and_delete(mount: Mount) -> None:
    mount.seed("plan.md", "v1\n")
    os.mkdir(mount.path("sub"))
    mount.seed("sub/x.md", "x1\n")
    snapshot(mount, "s1")
    mount.seed("plan.md", "v2\n")
    view = mount.mnt / ".fencefs" / "snapshots" / "s1"
    assert (view / "plan.md").read_text() == "v1\n"
    assert (view / "sub" / "x.md").read_text() == "x1\n"
    with pytest.raises(OSError) as info:
        (view / "plan.md").write_text("no")
    assert info.value.errno == errno.EROFS
    listed = json.loads(os.getxattr(str(mount.mnt), "user.fencefs.snapshots"))
    assert [(s["name"], s["files"]) for s in listed] == [("s1", 2)]
    manifest = json.loads((mount.mnt / ".fencefs" / "snapshot-meta" / "s1.json").read_text())
    assert manifest["versions"] == {"plan.md": [1, 0], "sub/x.md": [1, 0]}
    snapshot(mount, "only-sub", "sub")
    assert os.listdir(mount.mnt / ".fencefs" / "snapshots" / "only-sub") == ["x.md"]
    for bad, code in (("s1", errno.EEXIST), ("a/b", errno.EINVAL), ("..", errno.EINVAL)):
        with pytest.raises(OSError) as info:
            snapshot(mount, bad)
        assert info.value.errno == code, bad
    with pytest.raises(OSError) as info:
        snapshot(mount, "t", ".fencefs")
    assert info.value.errno == errno.EINVAL
    os.setxattr(str(mount.mnt), "user.fencefs.snapshot-delete", b"s1")
    assert not (mount.backing / ".fencefs" / "snapshots" / "s1").exists()
    # The kernel drops its cached entry once the daemon's invalidation reaches it.
    deadline = time.monotonic() + 10
    while view.exists():
        assert time.monotonic() < deadline, "the deleted snapshot's entry stayed cached"
        time.sleep(0.01)
    assert (mount.mnt / "plan.md").read_text() == "v2\n"


AGENT_LOOP = r"""
cd "$MNT"
ok=0; refused=0
for i in $(seq 1 "$ROUNDS"); do
  d=.fencefs/txn/$FENCEFS_AGENT-$i
  mkdir "$d"
  n=$(cut -d' ' -f1 a.txt); cat b.txt c.txt > /dev/null
  for f in a b c; do echo "$((n + 1)) $FENCEFS_AGENT-$i" > "$d/$f.txt"; done
  if setfattr -n user.fencefs.commit -v 1 "$d" 2>/dev/null; then ok=$((ok + 1))
  else refused=$((refused + 1)); fi
  rmdir "$d"
done
echo "$ok $refused"
"""

SNAPSHOTTER = r"""
import json, os, sys
mnt, rounds = sys.argv[1], int(sys.argv[2])
mixed = seen = 0
for k in range(rounds):
    os.setxattr(mnt, "user.fencefs.snapshot-create", f"cut{k}".encode())
    view = os.path.join(mnt, ".fencefs", "snapshots", f"cut{k}")
    texts = [open(os.path.join(view, f"{f}.txt")).read() for f in "abc"]
    seen += 1
    mixed += len(set(texts)) != 1
    os.setxattr(mnt, "user.fencefs.snapshot-delete", f"cut{k}".encode())
print(seen, mixed)
"""


def test_two_shell_agents_race_and_snapshots_never_mix(mount: Mount) -> None:
    """Two shell agents update a.txt, b.txt, c.txt together over many rounds
    while a third process keeps taking snapshots. Every final state is a
    sequence of whole transactions: the three files are equal and their
    counter is the number of transactions that committed (none lost, none
    torn); no snapshot ever held files from different transactions."""
    for f in "abc":
        mount.seed(f"{f}.txt", "0 seed\n")
    rounds = 40
    agents = [subprocess.Popen(["bash", "-c", AGENT_LOOP], stdout=subprocess.PIPE, text=True,
                               env={**os.environ, "FENCEFS_AGENT": name, "MNT": str(mount.mnt),
                                    "ROUNDS": str(rounds)}) for name in ("x", "y")]
    snapper = subprocess.Popen(["python3", "-c", SNAPSHOTTER, str(mount.mnt), "30"],
                               stdout=subprocess.PIPE, text=True)
    outs = [p.communicate(timeout=300)[0].split() for p in agents]
    seen, mixed = map(int, snapper.communicate(timeout=300)[0].split())
    committed = sum(int(o[0]) for o in outs)
    assert sum(int(o[0]) + int(o[1]) for o in outs) == 2 * rounds
    texts = [Path(mount.path(f"{f}.txt")).read_text() for f in "abc"]
    assert len(set(texts)) == 1, texts
    assert int(texts[0].split()[0]) == committed
    assert 0 < committed < 2 * rounds  # they really raced: some refused, some landed
    assert (seen, mixed) == (30, 0)
    assert len(events(mount, "txn-commit")) == committed


@pytest.mark.parametrize("step", ["before-intent", "after-intent", "after-rename-1",
                                  "after-renames", "after-deletes"])
def test_daemon_killed_at_every_step_of_a_transaction(tmp_path: Path, step: str,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The daemon dies (SIGKILL, by its test hook) at ``step`` of a
    transaction's install; after the next mount every file is old, or every
    file is new, and the journal says which."""
    from tests.support.mount import require_fuse

    require_fuse()
    m = Mount(tmp_path)
    m.start()
    try:
        for f in ("a.txt", "b.txt", "gone.txt"):
            m.seed(f, "old\n")
    finally:
        m.stop()
    monkeypatch.setenv("FENCEFS_TEST_TXN_CRASH", step)
    m.start()
    monkeypatch.delenv("FENCEFS_TEST_TXN_CRASH")
    try:
        root = staging(m, "k")
        sh(f"""cd {m.mnt}; mkdir {root}; cat a.txt b.txt >/dev/null
               echo new > {root}/a.txt; echo new > {root}/b.txt
               echo gone.txt > {root}/.fencefs-delete""")
        proc = sh(f"setfattr -n {COMMIT} -v 1 {root}", check=False)
        assert proc.returncode != 0  # the daemon died under it
        assert m.proc is not None and m.proc.wait(timeout=30) == -9
    finally:
        m.kill()
    m.start()
    try:
        state = ([Path(m.path(f)).read_text() for f in ("a.txt", "b.txt")],
                 os.path.exists(m.path("gone.txt")))
        recovered = events(m, "txn-recovered")
        if step == "before-intent":
            assert state == (["old\n", "old\n"], True)
            assert recovered[-1]["rolled"] == "back"
        else:
            assert state == (["new\n", "new\n"], False)
            if step != "after-deletes":
                assert recovered[-1]["rolled"] == "forward"
            assert int(os.getxattr(m.path("a.txt"), "user.fencefs.version")) == 2
    finally:
        m.stop()
    log = m.log()
    assert "Traceback" not in log and " ERROR " not in log, log


def fencefs_cli(*args: str) -> subprocess.CompletedProcess[str]:
    import sys

    return subprocess.run([sys.executable, "-m", "fencefs.cli", *args], capture_output=True,
                          text=True, timeout=60)


def test_snapshot_cli(mount: Mount) -> None:
    mount.seed("plan.md", "v1\n")
    mnt = str(mount.mnt)
    made = fencefs_cli("snapshot", "create", mnt, "before")
    assert made.returncode == 0 and "before: 1 files" in made.stdout, made.stderr
    mount.seed("plan.md", "v2\n")
    listed = fencefs_cli("snapshot", "list", mnt)
    assert listed.stdout.startswith("before\t"), listed.stdout
    status = fencefs_cli("status", mnt)
    assert "snapshots: 1 (before; 1 files linked; at most 50, oldest dropped first)" \
        in status.stdout, status.stdout
    assert "  snapshot before " in status.stdout and " 1 files " in status.stdout
    shown = fencefs_cli("snapshot", "show", mnt, "before")
    assert "plan.md\tversion 1\tepoch 0" in shown.stdout
    again = fencefs_cli("snapshot", "create", mnt, "before")
    assert again.returncode == 1 and "it exists" in again.stderr
    bad = fencefs_cli("snapshot", "create", mnt, "a/b")
    assert bad.returncode == 1 and "bad name" in bad.stderr
    outside = fencefs_cli("snapshot", "create", mnt, "x", "--path", "../..")
    assert outside.returncode == 1 and "bad name or path" in outside.stderr
    assert fencefs_cli("snapshot", "delete", mnt, "before").returncode == 0
    gone = fencefs_cli("snapshot", "show", mnt, "before")
    assert gone.returncode == 1 and "no snapshot" in gone.stderr
    assert json.loads(fencefs_cli("snapshot", "list", mnt, "--json").stdout) == []


def test_snapshot_restore_is_one_fenced_commit(mount: Mount) -> None:
    mount.seed("a.md", "a1\n")
    mount.seed("b.md", "b1\n")
    mnt = str(mount.mnt)
    assert fencefs_cli("snapshot", "create", mnt, "s").returncode == 0
    mount.seed("a.md", "a2\n")
    mount.seed("b.md", "b2\n")
    done = fencefs_cli("snapshot", "restore", mnt, "s")
    assert done.returncode == 0 and "2 files restored" in done.stdout, done.stderr
    texts = [Path(mount.path(f)).read_text() for f in ("a.md", "b.md")]
    assert texts == ["a1\n", "b1\n"]
    assert events(mount, "txn-commit")[-1]["files"] == ["a.md", "b.md"]


def test_staging_of_a_killed_shell_agent_is_put_away(tmp_path: Path) -> None:
    """A shell agent stages two files and is SIGKILLed before it commits. While
    it lives, the upkeep leaves its staging directory alone; once it has been
    dead for --keep-staging-for (1 s here), the upkeep puts the staged files
    under rejected/ (reason abandoned), says so in one txn-abandoned journal
    line, and removes the directory. Nothing was committed."""
    import signal

    from tests.support.mount import require_fuse

    require_fuse()
    mount = Mount(tmp_path, "--keep-staging-for", "1s")
    mount.start()
    try:
        _killed_shell_agent(mount, signal.SIGKILL)
    finally:
        mount.stop()


def _killed_shell_agent(mount: Mount, sig: int) -> None:
    mount.seed("a.txt", "a0\n")
    root = staging(mount, "s")
    agent = subprocess.Popen(
        ["bash", "-c", f"""cd {mount.mnt}; mkdir {root}; cat a.txt > /dev/null
            echo a1 > {root}/a.txt; mkdir {root}/sub; echo b1 > {root}/sub/b.txt
            echo staged; sleep 600"""],
        env={**os.environ, "FENCEFS_AGENT": "shell"}, stdout=subprocess.PIPE, text=True,
        start_new_session=True)
    try:
        assert agent.stdout is not None and agent.stdout.readline() == "staged\n"
        rejected = len(mount.rejected())
        mount.wait_upkeep()
        mount.wait_upkeep()   # two upkeep runs while the owner lives: left alone
        assert sorted(os.listdir(root)) == ["a.txt", "sub"]
        assert events(mount, "txn-abandoned") == []
    finally:
        os.killpg(agent.pid, sig)   # the shell and its sleep
        agent.wait()
        agent.stdout.close()
    deadline = time.monotonic() + 30
    while not events(mount, "txn-abandoned"):
        assert time.monotonic() < deadline, "the killed agent's staging directory stayed"
        time.sleep(0.05)
    gone = events(mount, "txn-abandoned")[-1]
    assert gone["file"] == ".fencefs/txn/s" and gone["identity"] == "agent:shell"
    assert gone["files"] == ["a.txt", "sub/b.txt"]
    assert not root.exists()
    now = mount.rejected()
    assert len(now) == rejected + 2 and all(".abandoned.agent:shell." in n for n in now[-2:])
    assert Path(mount.path("a.txt")).read_text() == "a0\n"
    assert not os.path.exists(mount.path("sub/b.txt"))


def test_snapshots_count_against_their_bound(tmp_path: Path) -> None:
    """--keep-snapshots 2: a third snapshot makes the upkeep drop the oldest
    (tree and manifest), journaled as one retention line of kind snapshots;
    status lists the two left, with the bound."""
    from tests.support.mount import require_fuse

    require_fuse()
    m = Mount(tmp_path, "--keep-snapshots", "2")
    m.start()
    try:
        m.seed("plan.md", "v1\n")
        mnt = str(m.mnt)
        for name in ("s1", "s2", "s3"):
            assert fencefs_cli("snapshot", "create", mnt, name).returncode == 0
        deadline = time.monotonic() + 30
        while not [e for e in events(m, "retention") if e.get("kind") == "snapshots"]:
            assert time.monotonic() < deadline, "the snapshot bound was never applied"
            time.sleep(0.05)
        line = [e for e in events(m, "retention") if e.get("kind") == "snapshots"][-1]
        assert line["dropped"] == 1 and line["files"] == 1
        assert sorted(os.listdir(m.mnt / ".fencefs" / "snapshots")) == ["s2", "s3"]
        status = fencefs_cli("status", mnt).stdout
        assert "snapshots: 2 (s2, s3; 2 files linked; at most 2, oldest dropped first)" \
            in status, status
        assert "  snapshot s1 " not in status and "  snapshot s3 " in status
    finally:
        m.stop()
