"""History, restore, retention and metrics on a real mount (issue 15)."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from fencefs import client_history
from fencefs.client import FenceConflict
from fencefs.history import RESTORE_FROM, STATS
from tests.support.mount import ROOT, Mount, require_fuse
from tests.support.procs import wait_traced

MakeMount = Callable[..., Mount]


def write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def read(path: str) -> str:
    with open(path) as f:
        return f.read()


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fencefs.cli", *args], capture_output=True,
                          text=True, timeout=60, cwd=ROOT)


def stats(m: Mount) -> dict[str, float]:
    snap = json.loads(os.getxattr(str(m.mnt), STATS))
    out = {}
    for row in snap["counters"] + snap["gauges"]:
        labels = ",".join(f"{k}={v}" for k, v in sorted(row["labels"].items()))
        out[f"{row['name']}{{{labels}}}" if labels else row["name"]] = row["value"]
    out["history_scanned"] = float(snap["retention"]["history_scanned"])
    return out


def wait_for(what: Callable[[], bool], message: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not what():
        assert time.monotonic() < deadline, message
        time.sleep(0.02)


def test_every_commit_keeps_the_version_it_replaced(mount: Mount) -> None:
    path = mount.path("plan.md")
    for text in ("one\n", "two\n", "three\n"):
        write(path, text)
    view = mount.mnt / ".fencefs" / "versions" / "plan.md"
    assert sorted(os.listdir(view)) == ["1", "2"]
    assert (view / "1").read_text() == "one\n" and (view / "2").read_text() == "two\n"
    # zero-copy: the retained version is the very inode that was replaced
    backing = mount.backing / ".fencefs" / "versions" / "plan.md" / "2"
    assert os.lstat(backing).st_nlink == 1
    h = client_history.history(path)
    assert (h.version, h.exists) == (3, True)
    assert [v.version for v in h.versions] == [1, 2]
    assert h.versions[0].identity is not None and h.versions[0].size == 4
    out = cli("history", path, "--json")
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)["versions"]
    assert [r["version"] for r in rows] == [1, 2]
    import hashlib
    assert rows[1]["sha256"] == hashlib.sha256(b"two\n").hexdigest()


def test_history_view_is_read_only(mount: Mount) -> None:
    path = mount.path("f")
    write(path, "a")
    write(path, "b")
    version = mount.mnt / ".fencefs" / "versions" / "f" / "1"
    for attempt in (lambda: open(version, "w"), lambda: os.unlink(version),
                    lambda: os.rename(version, mount.path("g")),
                    lambda: os.truncate(version, 0),
                    lambda: os.mkdir(mount.mnt / ".fencefs" / "versions" / "x")):
        with pytest.raises(OSError) as e:
            attempt()
        assert e.value.errno == errno.EROFS
    assert version.read_text() == "a"


def test_restore_is_a_commit_with_restored_from(mount: Mount) -> None:
    path = mount.path("plan.md")
    for text in ("one\n", "two\n", "three\n"):
        write(path, text)
    out = cli("restore", path, "--version", "1")
    assert out.returncode == 0, out.stderr
    assert read(path) == "one\n"
    assert int(os.getxattr(path, "user.fencefs.version")) == 4
    [entry] = [e for e in mount.journal() if e.get("op") == "restore"]
    assert (entry["event"], entry["restored_from"], entry["new_version"]) == ("commit", 1, 4)
    # the version the restore replaced is history too
    assert (mount.mnt / ".fencefs" / "versions" / "plan.md" / "3").read_text() == "three\n"


def test_restore_racing_a_writer_gets_eagain(mount: Mount,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    path = mount.path("plan.md")
    write(path, "one\n")
    write(path, "two\n")
    # The restore's steps by hand: its handle rests on version 2 ...
    fd = os.open(path, os.O_RDWR)
    assert int(os.getxattr(fd, "user.fencefs.version")) == 2
    os.setxattr(fd, RESTORE_FROM, b"1")
    os.ftruncate(fd, 0)
    os.write(fd, b"one\n")
    write(path, "a writer's update\n")  # ... a writer commits version 3 meanwhile
    with pytest.raises(OSError) as e:
        os.fsync(fd)
    assert e.value.errno == errno.EAGAIN
    with pytest.raises(OSError) as closed:
        os.close(fd)
    assert closed.value.errno == errno.EAGAIN  # the refusal is repeated
    assert read(path) == "a writer's update\n"
    refused = [x for x in mount.journal() if x["event"] == "conflict"]
    assert refused and refused[-1]["op"] == "commit"
    assert not [x for x in mount.journal() if x.get("op") == "restore"]
    # The client: the state it read is stale by the time it opens: a typed,
    # retryable error, nothing written; with retry it reads again and lands.
    real = client_history.history
    calls: list[str] = []

    def stale(p: str) -> client_history.History:
        got = real(p)
        if not calls:
            write(path, "another update\n")  # between the read and the open
        calls.append(p)
        return got

    monkeypatch.setattr(client_history, "history", stale)
    with pytest.raises(FenceConflict) as conflict:
        client_history.restore(path, 1)
    assert conflict.value.rested_version == 3 and conflict.value.current_version == 4
    assert read(path) == "another update\n"
    calls.clear()
    assert client_history.restore(path, 1, retry=True) == 6
    assert read(path) == "one\n"
    [entry] = [x for x in mount.journal() if x.get("op") == "restore"]
    assert (entry["restored_from"], entry["new_version"]) == (1, 6)


# A `fencefs restore` process whose state read goes stale before its open: a
# writer's commit lands right after the first read (the module-level hook
# stands in for a writer that is quicker than the command).
_STALE_RESTORE = """
import sys
from fencefs import cli, client_history
real = client_history.history
calls = []
def stale(p):
    got = real(p)
    if not calls:
        with open(p, "w") as f:
            f.write("a writer's update\\n")
    calls.append(p)
    return got
client_history.history = stale
sys.exit(cli.main(sys.argv[1:]))
"""


@pytest.mark.parametrize("retry", [False, True])
def test_restore_command_exit_code_on_a_conflict(mount: Mount, retry: bool) -> None:
    """`fencefs restore` that loses a race exits 75 (EX_TEMPFAIL: run again)
    and changes nothing; with --retry it reads again and lands."""
    path = mount.path("plan.md")
    write(path, "one\n")
    write(path, "two\n")
    out = subprocess.run([sys.executable, "-c", _STALE_RESTORE, "restore", path,
                          "--version", "1", *(["--retry"] if retry else [])],
                         capture_output=True, text=True, timeout=60, cwd=ROOT)
    if retry:
        assert out.returncode == 0, out.stderr
        assert read(path) == "one\n"
        assert int(os.getxattr(path, "user.fencefs.version")) == 4
    else:
        assert out.returncode == 75, out.stderr
        assert "conflict" in out.stderr and "--retry" in out.stderr
        assert len(out.stderr.strip().splitlines()) == 1
        assert read(path) == "a writer's update\n"
        assert int(os.getxattr(path, "user.fencefs.version")) == 3
        assert not [x for x in mount.journal() if x.get("op") == "restore"]


def test_restore_of_a_reclaimed_file_is_fenced(mount: Mount) -> None:
    path = mount.path("f")
    write(path, "one")
    write(path, "two")
    fd = os.open(path, os.O_RDWR)
    os.setxattr(fd, RESTORE_FROM, b"1")
    os.ftruncate(fd, 0)
    os.setxattr(path, "user.fencefs.reclaim", b"1")
    with pytest.raises(OSError) as e:
        os.write(fd, b"one")
    assert e.value.errno == errno.ESTALE
    with pytest.raises(OSError) as e:
        os.close(fd)
    assert e.value.errno == errno.ESTALE
    assert read(path) == "two"


def test_bad_restores_change_nothing(mount: Mount) -> None:
    path = mount.path("f")
    write(path, "one")
    write(path, "two")
    out = cli("restore", path, "--version", "9")
    assert out.returncode == 2 and "no retained version 9" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
    os.mkdir(mount.path("d"))
    out = cli("restore", mount.path("d"), "--version", "1")
    assert out.returncode == 2 and "directory" in out.stderr
    fd = os.open(path, os.O_RDWR)
    try:
        with pytest.raises(OSError) as e:
            os.setxattr(fd, RESTORE_FROM, b"9")
        assert e.value.errno == errno.ENOENT
        with pytest.raises(OSError) as e:
            os.setxattr(fd, RESTORE_FROM, b"one")
        assert e.value.errno == errno.EINVAL
    finally:
        os.close(fd)
    with pytest.raises(OSError) as e:  # no write handle of the caller's
        os.setxattr(path, RESTORE_FROM, b"1")
    assert e.value.errno == errno.ENOENT
    assert read(path) == "two" and int(os.getxattr(path, "user.fencefs.version")) == 2


def test_deleted_file_is_restorable(mount: Mount) -> None:
    path = mount.path("notes.md")
    write(path, "first\n")
    write(path, "last words\n")
    os.unlink(path)
    h = client_history.history(path)
    assert not h.exists and [v.version for v in h.versions] == [1, 2]
    out = cli("history", path)
    assert out.returncode == 0 and "deleted" in out.stdout
    assert cli("restore", path, "-n", "2").returncode == 0
    assert read(path) == "last words\n"
    assert int(os.getxattr(path, "user.fencefs.version")) == 4  # unlink made 3


def test_history_follows_a_rename(mount: Mount) -> None:
    os.mkdir(mount.path("d"))
    path = mount.path("d/a")
    write(path, "1")
    write(path, "2")
    os.rename(path, mount.path("d/b"))
    os.rename(mount.path("d"), mount.path("e"))
    h = client_history.history(mount.path("e/b"))
    assert [v.version for v in h.versions] == [1]
    assert client_history.history(mount.path("d/a")).versions == ()


def test_history_off(make_mount: MakeMount) -> None:
    m = make_mount("--keep-versions", "0")
    write(m.path("f"), "1")
    write(m.path("f"), "2")
    assert not (m.backing / ".fencefs" / "versions" / "f").exists()


def test_bad_retention_values_fail_the_mount(tmp_path: Path) -> None:
    require_fuse()
    (tmp_path / "b").mkdir()
    (tmp_path / "m").mkdir()
    for option, value, says in (("--keep-for", "7x", "not a duration"),
                                ("--journal-max", "lots", "not a size"),
                                ("--keep-versions", "-1", "not a count"),
                                ("--metrics", "localhost:http", "not an address")):
        out = cli("mount", option, value, str(tmp_path / "b"), str(tmp_path / "m"))
        assert out.returncode == 2 and says in out.stderr, out.stderr
    assert not os.path.ismount(tmp_path / "m")


def _counter_workload(m: Mount, procs: int, rounds: int) -> None:
    """The issue's contended workload: read, increment, write back, retry on
    EAGAIN, on a counter and a JSON memory file."""
    code = r"""
import errno, json, os, sys
mnt, me, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3])
for _ in range(rounds):
    for name in ("counter", "memory.json"):
        path = os.path.join(mnt, name)
        while True:
            try:
                with open(path) as f:
                    data = f.read()
                if name == "counter":
                    new = str(int(data or 0) + 1)
                else:
                    d = json.loads(data or "{}"); d[me] = d.get(me, 0) + 1
                    new = json.dumps(d)
                with open(path, "w") as f:
                    f.write(new)
                break
            except OSError as e:
                if e.errno != errno.EAGAIN:
                    raise
"""
    write(m.path("counter"), "0")
    write(m.path("memory.json"), "{}")
    workers = [subprocess.Popen([sys.executable, "-c", code, str(m.mnt), f"w{i}", str(rounds)],
                                env={**os.environ, "FENCEFS_AGENT": f"w{i}"})
               for i in range(procs)]
    for w in workers:
        assert w.wait(timeout=300) == 0
    assert read(m.path("counter")) == str(procs * rounds)


def test_retention_keeps_fencefs_dir_within_bounds(make_mount: MakeMount) -> None:
    m = make_mount("--keep-versions", "5", "--keep-rejected", "30",
                   "--keep-rejected-bytes", "4K", "--journal-max", "64K",
                   "--upkeep-interval", "0.1")
    _counter_workload(m, procs=6, rounds=40)
    meta = m.backing / ".fencefs"

    def within() -> bool:
        versions = [len(os.listdir(meta / "versions" / n)) for n in ("counter", "memory.json")]
        rejected = os.listdir(meta / "rejected")
        # each identity's newest refused draft per file may stay (6 x 2)
        return max(versions) <= 5 and len(rejected) <= 30 + 12
    wait_for(within, "retention did not bring .fencefs/ within its bounds")
    journal = sum(p.stat().st_size for p in (meta / "journal").glob("*.jsonl"))
    journal += (meta / "journal.jsonl").stat().st_size
    segment = 1 << 20  # the smallest segment
    assert journal <= 64 * 1024 + segment
    s = stats(m)
    assert s["rejected_writes"] == len(os.listdir(meta / "rejected"))
    assert s["retention_dropped{kind=versions}"] > 0
    assert s["retention_dropped{kind=rejected}"] > 0
    # drops are journaled in aggregate, at most every 10 s
    wait_for(lambda: any(e["event"] == "retention" and e.get("kind") == "versions"
                         for e in m.journal()), "no retention line journaled", timeout=30)
    drops = [e for e in m.journal() if e["event"] == "retention"]
    assert all(e["dropped"] > 0 for e in drops)
    assert len(drops) < s["retention_dropped{kind=versions}"]  # aggregated, not per file
    # fencefs log reads across segments: every commit of the counter is there
    out = cli("log", str(m.mnt), "counter", "--json")
    versions = {json.loads(line).get("new_version") for line in out.stdout.splitlines()
                if json.loads(line)["event"] == "commit"}
    assert max(v for v in versions if v is not None) == 6 * 40 + 1


def test_gc_dry_run_then_gc(make_mount: MakeMount) -> None:
    m = make_mount("--keep-versions", "50")
    for i in range(12):
        write(m.path("f"), str(i))
    m.remount()
    m.stop()
    m.extra = ["--keep-versions", "3"]
    m.start()
    out = cli("gc", str(m.mnt), "--dry-run")
    assert out.returncode == 0 and "versions  would remove 8" in out.stdout, out.stdout
    assert len(os.listdir(m.mnt / ".fencefs" / "versions" / "f")) == 11
    out = cli("gc", str(m.mnt))
    assert out.returncode == 0 and "versions  removed 8" in out.stdout, out.stdout
    assert sorted(os.listdir(m.mnt / ".fencefs" / "versions" / "f")) == ["10", "11", "9"]


def test_stats_and_prometheus_scrape(make_mount: MakeMount) -> None:
    pytest.importorskip("prometheus_client")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    m = make_mount("--metrics", f"127.0.0.1:{port}")
    write(m.path("f"), "1")
    write(m.path("f"), "2")
    out = cli("stats", str(m.mnt))
    assert out.returncode == 0 and "commits{op=write,policy=optimistic}" in out.stdout
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10
                                  ).read().decode()
    assert 'fencefs_commits_total{op="write",policy="optimistic"} 2.0' in text
    assert "fencefs_versions_retained 1.0" in text
    assert 'fencefs_commit_seconds_count{policy="optimistic"} 2.0' in text
    status = cli("status", str(m.mnt))
    assert "1 versions" in status.stdout, status.stdout


def test_crash_mid_retention_leaves_a_consistent_state(make_mount: MakeMount) -> None:
    if shutil.which("strace") is None:
        if os.environ.get("CI"):
            pytest.fail("strace is missing (scripts/setup installs it)")
        pytest.skip("needs strace")
    m = make_mount("--keep-versions", "50")
    for name in ("a", "b", "c"):
        for i in range(1, 11):
            write(m.path(name), f"{name}{i}")
    m.stop()
    m.extra = ["--keep-versions", "2"]
    m.start()
    wait_for(lambda: stats(m)["history_scanned"] == 1, "no start-up scan")
    assert m.proc is not None
    # kill the daemon at its 4th unlink: in the middle of dropping versions
    tracer = subprocess.Popen(["strace", "-f", "-qq", "-p", str(m.proc.pid), "-o", os.devnull,
                               "-e", "trace=unlink,unlinkat",
                               "-e", "inject=unlink,unlinkat:signal=KILL:when=4"],
                              stderr=subprocess.DEVNULL)
    wait_traced(m.proc.pid, tracer.pid)  # attached to every thread
    cli("gc", str(m.mnt))
    m.proc.wait(timeout=20)
    assert m.proc.returncode == -signal.SIGKILL
    tracer.wait(timeout=10)
    subprocess.run(["fusermount3", "-u", "-z", str(m.mnt)], capture_output=True)
    if m.proc.stderr:
        m.proc.stderr.close()
    m.proc = None
    m.start()
    wait_for(lambda: stats(m)["history_scanned"] == 1, "no start-up scan")
    listed = 0
    for name in ("a", "b", "c"):
        assert read(m.path(name)) == f"{name}10"
        assert int(os.getxattr(m.path(name), "user.fencefs.version")) == 10
        h = client_history.history(m.path(name))
        for v in h.versions:  # every entry whole, and what it says it is
            assert Path(v.location).read_text() == f"{name}{v.version}"
        listed += len(h.versions)
    assert 3 * 2 <= listed < 3 * 9  # some dropped, the bound not yet reached
    assert stats(m)["versions_retained"] == listed  # nothing counted twice
    assert cli("gc", str(m.mnt)).returncode == 0
    assert stats(m)["versions_retained"] == 6
    for name in ("a", "b", "c"):
        assert [v.version for v in client_history.history(m.path(name)).versions] == [8, 9]
