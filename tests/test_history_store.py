"""The history store, retention and journal segments, on real files (no mount)."""

from __future__ import annotations

import errno
import json
import os
import time
import urllib.request
from pathlib import Path

import pytest

from fencefs.core.model import Persisted
from fencefs.history import decode_path, encode_name, encode_path
from fencefs.metrics import Metrics, parse_address, quantile, serve
from fencefs.store.backing import Backing, Fingerprint, encode_state, stamp
from fencefs.store.drafts import Drafts, rejected_name
from fencefs.store.journal import Journal, read_journal, segments_of
from fencefs.store.retention import (
    Dropped,
    RejectedIndex,
    Retention,
    parse_count,
    parse_duration,
    parse_size,
)
from fencefs.store.versions import VersionStore


def commit(backing: Backing, rel: str, data: bytes, version: int, who: str = "agent:a"
           ) -> None:
    """What a commit leaves on disk: new content with its state and stamp."""
    path = os.path.join(backing.root, rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".new"
    with open(tmp, "wb") as f:
        f.write(data)
        fp = Fingerprint.of(os.fstat(f.fileno()))
        os.setxattr(f.fileno(), "user.fencefs.state", encode_state(Persisted(version, 0), fp))
        stamp(f.fileno(), who, 42, time.time())
    os.rename(tmp, path)


@pytest.fixture
def store(tmp_path: Path) -> tuple[Backing, VersionStore]:
    backing = Backing(str(tmp_path))
    os.makedirs(backing.meta, exist_ok=True)
    return backing, VersionStore(backing.meta, Retention(keep_versions=3, keep_for=3600))


def test_names_round_trip() -> None:
    for name in ("plan.md", "2026", "0", "a%b", "%32", "x 1", "ünï"):
        enc = encode_name(name)
        assert not enc.isdigit()
        assert encode_name(name) == enc and decode_path(enc) == name
    assert encode_path("a/2026/b") == "a/%32026/b"
    assert decode_path(encode_path("d/100/%41")) == "d/100/%41"


def test_keep_links_the_replaced_inode(store: tuple[Backing, VersionStore]) -> None:
    backing, versions = store
    commit(backing, "d/plan.md", b"one", 1, "agent:planner")
    ino = os.lstat(os.path.join(backing.root, "d/plan.md")).st_ino
    assert versions.keep("d/plan.md", os.path.join(backing.root, "d/plan.md"), 1, time.time())
    commit(backing, "d/plan.md", b"two", 2)
    [v] = versions.entries("d/plan.md")
    assert (v.version, v.size, v.identity, v.pid) == (1, 3, "agent:planner", 42)
    assert os.lstat(v.location).st_ino == ino  # zero-copy: the very inode
    assert Path(versions.location("d/plan.md", 1)).read_bytes() == b"one"
    assert versions.get("d/plan.md", 7) is None


def test_keep_again_after_a_crash_counts_once(store: tuple[Backing, VersionStore]) -> None:
    backing, versions = store
    commit(backing, "f", b"one", 1)
    assert versions.keep("f", os.path.join(backing.root, "f"), 1, time.time())
    # the daemon died before the rename: the next commit keeps v1 again
    assert versions.keep("f", os.path.join(backing.root, "f"), 1, time.time())
    assert versions.kept == 1 and len(versions.entries("f")) == 1


def test_mislabeled_entry_is_not_history(store: tuple[Backing, VersionStore]) -> None:
    backing, versions = store
    commit(backing, "f", b"one", 5)
    versions.keep("f", os.path.join(backing.root, "f"), 5, time.time())
    os.rename(versions.location("f", 5), versions.location("f", 4))
    assert versions.entries("f") == []
    dropped = Dropped("versions")
    versions.trim("f", time.time(), dropped)
    assert dropped.count == 1 and not os.path.exists(versions.location("f", 4))


def test_copy_when_linking_is_impossible(store: tuple[Backing, VersionStore],
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    backing, versions = store
    commit(backing, "f", b"one", 1, "agent:x")

    def no_link(*a: object, **k: object) -> None:
        raise OSError(errno.EMLINK, "too many links")

    monkeypatch.setattr(os, "link", no_link)
    assert versions.keep("f", os.path.join(backing.root, "f"), 1, time.time())
    monkeypatch.undo()
    [v] = versions.entries("f")
    assert v.identity == "agent:x" and versions.copied == 1
    assert os.lstat(v.location).st_ino != os.lstat(os.path.join(backing.root, "f")).st_ino
    assert [n for n in os.listdir(versions.dir_of("f")) if not n.isdigit()] == []


def test_keep_never_raises(store: tuple[Backing, VersionStore]) -> None:
    backing, versions = store
    assert not versions.keep("gone", os.path.join(backing.root, "gone"), 1, time.time())


def test_trim_by_count_and_age(store: tuple[Backing, VersionStore]) -> None:
    backing, versions = store  # keep_versions=3, keep_for=1h
    for v in range(1, 6):
        commit(backing, "f", b"x" * v, v)
        versions.keep("f", os.path.join(backing.root, "f"), v, time.time())
    assert versions.due() == 1
    assert [v.version for v in versions.entries("f")] == [1, 2, 3, 4, 5]
    dropped = versions.sweep(time.time())
    assert [v.version for v in versions.entries("f")] == [3, 4, 5]
    assert (dropped.count, dropped.bytes) == (2, 1 + 2)
    assert versions.due() == 0 and versions.count == 3 and versions.bytes == 3 + 4 + 5
    # a file whose new versions reach its bound asks for a sweep at once
    asked: list[int] = []
    versions.on_due = lambda: asked.append(1)
    for v in range(6, 9):
        commit(backing, "f", b"x" * v, v)
        versions.keep("f", os.path.join(backing.root, "f"), v, time.time())
    assert asked == [1]
    dropped = versions.sweep(time.time())
    assert [v.version for v in versions.entries("f")] == [6, 7, 8]
    assert (dropped.count, dropped.bytes) == (3, 3 + 4 + 5)
    # age: an hour later everything has aged out, and the directory goes too
    dropped = versions.sweep(time.time() + 7200)
    assert dropped.count == 3 and not os.path.exists(versions.dir_of("f"))
    assert versions.count == 0 and versions.bytes == 0


def test_sweep_trims_only_noted_paths(store: tuple[Backing, VersionStore],
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    backing, versions = store
    for i in range(50):
        commit(backing, f"f{i}", b"x", 1)
        versions.keep(f"f{i}", os.path.join(backing.root, f"f{i}"), 1, time.time())
    versions.sweep(time.time())
    trimmed: list[str] = []
    real = versions.trim
    monkeypatch.setattr(versions, "trim", lambda rel, *a, **k: (trimmed.append(rel),
                                                                  real(rel, *a, **k))[1])
    commit(backing, "f7", b"y", 2)
    versions.keep("f7", os.path.join(backing.root, "f7"), 2, time.time())
    versions.sweep(time.time())
    assert trimmed == ["f7"]  # not the 49 others: flat in the number of files


def test_history_follows_renames(store: tuple[Backing, VersionStore]) -> None:
    backing, versions = store
    commit(backing, "d/a", b"1", 1)
    versions.keep("d/a", os.path.join(backing.root, "d/a"), 1, time.time())
    versions.moved("d/a", "d/b", is_dir=False)
    assert [v.version for v in versions.entries("d/b")] == [1]
    assert versions.entries("d/a") == []
    versions.moved("d", "e", is_dir=True)
    assert [v.version for v in versions.entries("e/b")] == [1]
    assert list(versions.paths()) == ["e/b"]


def test_deleted_file_keeps_history(store: tuple[Backing, VersionStore]) -> None:
    backing, versions = store
    commit(backing, "f", b"last words", 3)
    versions.keep("f", os.path.join(backing.root, "f"), 3, time.time())
    os.unlink(os.path.join(backing.root, "f"))
    assert Path(versions.get("f", 3).location).read_bytes() == b"last words"  # type: ignore


def test_history_off_keeps_nothing(tmp_path: Path) -> None:
    backing = Backing(str(tmp_path))
    os.makedirs(backing.meta)
    versions = VersionStore(backing.meta, Retention(keep_versions=0))
    commit(backing, "f", b"1", 1)
    assert not versions.keep("f", os.path.join(backing.root, "f"), 1, time.time())


def test_scan_counts_what_is_there(store: tuple[Backing, VersionStore]) -> None:
    backing, versions = store
    for rel in ("a", "b/c"):
        commit(backing, rel, b"12345", 1)
        versions.keep(rel, os.path.join(backing.root, rel), 1, time.time())
    count, size, oldest = versions.scan()
    assert (count, size) == (2, 10) and sorted(p for p, _ in oldest) == ["a", "b/c"]


# -- parsing -------------------------------------------------------------------


def test_parse_values() -> None:
    assert parse_duration("7d") == 7 * 86400 and parse_duration("12h") == 43200
    assert parse_duration("500ms") == 0.5 and parse_duration("90") == 90
    assert parse_size("100M") == 100 << 20 and parse_size("1G") == 1 << 30
    assert parse_size("64MiB") == 64 << 20 and parse_size("512") == 512
    assert parse_count("20") == 20
    for bad, fn in (("7x", parse_duration), ("-1d", parse_duration), ("1Q", parse_size),
                    ("ten", parse_count), ("-3", parse_count), ("", parse_size)):
        with pytest.raises(ValueError, match="not a"):
            fn(bad)


# -- rejected writes --------------------------------------------------------------


def _reject(directory: Path, target: str, who: str, size: int) -> str:
    name = rejected_name(target, who, "conflict")
    while (directory / name).exists():  # same microsecond
        name = rejected_name(target, who, "conflict")
    (directory / name).write_bytes(b"x" * size)
    return name


def test_rejected_bounds_keep_each_identitys_latest(tmp_path: Path) -> None:
    d = tmp_path / "rejected"
    d.mkdir()
    index = RejectedIndex(str(d))
    names = {}
    for round_ in range(5):
        for who in ("agent:a", "agent:b"):
            names[(who, round_)] = _reject(d, "plan.md", who, 10)
            index.add(names[(who, round_)], 10)
    policy = Retention(keep_rejected=1, keep_rejected_bytes=1 << 20, keep_rejected_for=3600)
    dropped = index.sweep(policy, time.time())
    left = sorted(os.listdir(d))
    # the bound says 1, but each identity's latest for the file stays
    assert left == sorted([names[("agent:a", 4)], names[("agent:b", 4)]])
    assert dropped.count == 8 and dropped.bytes == 80 and len(index) == 2
    # once older than the age bound, they go too
    index.sweep(policy, time.time() + 7200)
    assert os.listdir(d) == [] and len(index) == 0 and index.bytes == 0


def test_rejected_bytes_bound_drops_oldest_first(tmp_path: Path) -> None:
    d = tmp_path / "rejected"
    d.mkdir()
    made = [_reject(d, "f", "agent:a", 100) for i in range(10)]
    index = RejectedIndex(str(d))  # loaded from the directory
    assert len(index) == 10 and index.bytes == 1000
    dry = index.sweep(Retention(keep_rejected_bytes=300), time.time(), dry_run=True)
    assert dry.count == 7 and len(os.listdir(d)) == 10
    index.sweep(Retention(keep_rejected_bytes=300), time.time())
    assert sorted(os.listdir(d)) == made[7:]


def test_drafts_tell_the_index(tmp_path: Path) -> None:
    backing = Backing(str(tmp_path))
    drafts = Drafts(backing)
    (tmp_path / "f").write_text("x")
    draft = drafts.create("f", "agent:a", 1, None)
    os.write(draft.fd, b"hello")
    name = drafts.reject(draft, "agent:a", "conflict")
    assert list(drafts.rejected.names()) == [name] and drafts.rejected.bytes == 5


# -- journal segments --------------------------------------------------------------


def test_journal_rotates_and_reads_across_segments(tmp_path: Path) -> None:
    path = str(tmp_path / "journal.jsonl")
    journal = Journal(path, segment_bytes=2000, max_bytes=0)
    for i in range(100):
        journal.record("commit", f"f{i}", new_version=i)
        journal.sync()
    assert len(segments_of(path)) >= 3
    entries = read_journal(path)
    commits = [e for e in entries if e["event"] == "commit"]
    assert [e["new_version"] for e in commits] == list(range(100))
    assert sum(1 for e in entries if e["event"] == "segment") == len(segments_of(path))
    assert read_journal(path, segments=False)[0]["event"] == "segment"
    journal.close()


def test_journal_drops_oldest_segments_and_says_so(tmp_path: Path) -> None:
    path = str(tmp_path / "journal.jsonl")
    journal = Journal(path, segment_bytes=1000, max_bytes=3000)
    for i in range(300):
        journal.record("commit", f"f{i}", new_version=i)
    total = sum(os.path.getsize(p) for _, p in segments_of(path)) + os.path.getsize(path)
    assert total <= 3000 + 1000  # the bound, plus the segment being written
    assert journal.dropped_segments > 0
    notes = [e for e in read_journal(path) if e["event"] == "retention"]
    assert notes and notes[-1]["kind"] == "journal"
    first = segments_of(path)[0][0]
    # a reader can tell that segments before the first one left were dropped
    assert first > 1 and notes[-1]["last_segment"] == first - 1
    journal.close()


def test_journal_reopens_after_rotation(tmp_path: Path) -> None:
    path = str(tmp_path / "journal.jsonl")
    journal = Journal(path, segment_bytes=500)
    for i in range(30):
        journal.record("commit", "f", new_version=i)
    journal.close()
    again = Journal(path, segment_bytes=500)
    again.record("commit", "f", new_version=30)
    again.close()
    versions = [e["new_version"] for e in read_journal(path) if e["event"] == "commit"]
    assert versions == list(range(31))
    seqs = [n for n, _ in segments_of(path)]
    assert seqs == sorted(set(seqs)) and seqs[0] == 1


# -- metrics -------------------------------------------------------------------------


def test_metrics_snapshot_and_quantiles() -> None:
    m = Metrics()
    m.inc("commits", policy="optimistic")
    m.inc("commits", policy="optimistic")
    m.inc("reclaims", reason="operator")
    for ms in (1, 2, 3, 400):
        m.observe("commit_seconds", ms / 1000, policy="optimistic")
    m.gauge("journal_bytes", lambda: 123)
    m.gauge("claims_outstanding", lambda: {(("kind", "write"),): 2})
    snap = json.loads(json.dumps(m.snapshot()))
    counters = {(c["name"], tuple(c["labels"].items())): c["value"] for c in snap["counters"]}
    assert counters[("commits", (("policy", "optimistic"),))] == 2
    [h] = snap["histograms"]
    assert h["count"] == 4 and quantile(h["buckets"], 0.5) == 0.0025
    assert quantile(h["buckets"], 1.0) == 0.5
    gauges = {c["name"]: c["value"] for c in snap["gauges"]}
    assert gauges == {"journal_bytes": 123, "claims_outstanding": 2}


def test_parse_address() -> None:
    assert parse_address("9464") == ("127.0.0.1", 9464)
    assert parse_address(":9464") == ("127.0.0.1", 9464)
    assert parse_address("0.0.0.0:1") == ("0.0.0.0", 1)
    assert parse_address("[::1]:80") == ("::1", 80)
    for bad in ("x", "1:2:x", "70000"):
        with pytest.raises(ValueError):
            parse_address(bad)


def test_prometheus_scrape_over_http() -> None:
    m = Metrics()
    m.inc("commits", 3, policy="optimistic")
    m.observe("commit_seconds", 0.002, policy="optimistic")
    m.gauge("rejected_writes", lambda: 7)
    server = serve(m, "127.0.0.1", 0)
    try:
        port = server.server_address[1]
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10
                                      ).read().decode()
    finally:
        server.shutdown()
        server.server_close()
    assert 'fencefs_commits_total{policy="optimistic"} 3.0' in text
    assert 'fencefs_commit_seconds_bucket{le="0.0025",policy="optimistic"} 1.0' in text
    assert "fencefs_rejected_writes 7.0" in text


# -- the wire ---------------------------------------------------------------------------


def test_restore_from_round_trip() -> None:
    from fencefs.history import encode_restore_from, parse_restore_from

    for n in (0, 1, 6, 10**12):
        assert parse_restore_from(encode_restore_from(n)) == n
    for bad in (b"", b"-1", b"one", b"1.5", b"9" * 30, b"1 2"):
        with pytest.raises(ValueError, match="version number"):
            parse_restore_from(bad)


def test_client_history_is_plain_file_io() -> None:
    import subprocess
    import sys

    code = ("import sys, fencefs.client_history\n"
            "bad = [m for m in sys.modules if m.split('.')[0] in ('pyfuse3', 'trio')"
            " or m.startswith(('fencefs.fuse', 'fencefs.store', 'fencefs.core',"
            " 'fencefs.daemon'))]\n"
            "print(','.join(bad))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == ""
