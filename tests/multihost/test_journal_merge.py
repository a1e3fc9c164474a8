"""Merging the hosts' journals (fencefs/etcd/journals.py) and checking the
merged history (scripts/check-trace --merged), on written journals: the
order of decisions comes from their etcd revisions, not from the clocks or
the order of the files. No etcd, no mount."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from fencefs.etcd.journals import host_tag, journals, merge, merged, prepare
from tests.support.mount import ROOT

CHECK = str(ROOT / "scripts" / "check-trace")


def commit(ts: float, rev: int, version: int, **extra: Any) -> dict[str, Any]:
    return {"ts": ts, "event": "commit", "file": "f", "identity": "agent:x", "pid": 1,
            "version": version, "new_version": version + 1, "epoch": 0, "rev": rev, **extra}


def write(path: Path, events: list[dict[str, Any]]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(e) + "\n" for e in events))
    return str(path)


# Host B's clock is 5 s ahead: by time, B's v2->v3 (rev 12) would come before
# A's v1->v2 (rev 11). A's conflict was read at revision 12 (file at v3).
A = [commit(100.0, 10, 0), commit(100.2, 11, 1),
     {"ts": 100.3, "event": "conflict", "file": "f", "identity": "agent:y", "pid": 2,
      "version": 1, "current_version": 3, "epoch": 0, "current_epoch": 0, "rev": 12},
     {"ts": 100.4, "event": "foreign", "file": "g", "version": 0, "new_version": 1}]
B = [commit(95.1, 12, 2), commit(95.3, 14, 3, epoch=1),
     {"ts": 95.2, "event": "reclaim", "file": "f", "identity": "op", "pid": 3,
      "version": 3, "epoch": 0, "new_epoch": 1, "rev": 13}]


def test_merge_orders_decisions_by_revision_whatever_the_clocks() -> None:
    order = [(host, e["event"], e.get("rev")) for host, _, e in merge([("A", A), ("B", B)])]
    decided = [x for x in order if x[2] is not None]
    assert decided == [("A", "commit", 10), ("A", "commit", 11), ("B", "commit", 12),
                       ("A", "conflict", 12), ("B", "reclaim", 13), ("B", "commit", 14)]
    # the host-local line stays after its neighbour in its own journal
    assert order.index(("A", "foreign", None)) > order.index(("A", "conflict", 12))


def test_check_trace_merged_accepts_the_history_and_refuses_a_lost_update(
        tmp_path: Path) -> None:
    paths = [write(tmp_path / "a.jsonl", A), write(tmp_path / "b.jsonl", B)]
    ok = subprocess.run([CHECK, "--merged", *paths], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    # without the merge, B's journal alone is not a history
    alone = subprocess.run([CHECK, paths[1]], capture_output=True, text=True)
    assert alone.returncode == 1, alone.stdout
    # two commits resting on v1, on two hosts: the merged check sees it
    bad = [*B[:1], commit(95.4, 15, 1)]
    paths[1] = write(tmp_path / "b.jsonl", bad)
    lost = subprocess.run([CHECK, "--merged", *paths], capture_output=True, text=True)
    assert lost.returncode == 1 and "b.jsonl:2: OneWinner" in lost.stdout, lost.stdout


def test_merged_reads_every_hosts_journal_under_meta(tmp_path: Path) -> None:
    meta = tmp_path / ".fencefs"
    for host, events in (("node a/1", A), ("node-b", B)):
        write(Path(prepare(str(meta), host)), events)
    assert [h for h, _ in journals(str(meta))] == ["node a/1", "node-b"]
    assert "/" not in host_tag("node a/1") and host_tag("a") != host_tag("b")
    history = merged(str(meta))
    assert [e["new_version"] for e in history if e["event"] == "commit"] == [1, 2, 3, 4]
    assert {e["host"] for e in history} == {"node a/1", "node-b"}
