"""engine/journaling.py: namespace changes wait for the next durable step,
which syncs every directory they touched (moved with a renamed directory)."""

from __future__ import annotations

from pathlib import Path

import trio

from fencefs.engine.journaling import Journaling
from fencefs.store.backing import Backing
from fencefs.store.journal import Journal


class Recording(Backing):
    def __init__(self, root: str) -> None:
        super().__init__(root)
        self.synced: list[str] = []

    def sync_dir(self, rel_dir: str) -> None:
        super().sync_dir(rel_dir)
        self.synced.append(rel_dir)


def test_namespace_changes_are_synced_with_the_next_durable_step(tmp_path: Path) -> None:
    for d in ("a/b", "c", "e"):
        (tmp_path / d).mkdir(parents=True)
    backing = Recording(str(tmp_path))
    journaling = Journaling(Journal(str(tmp_path / "journal.jsonl")), backing, durable=True)
    journaling.namespace_changed("a/b", "")
    journaling.namespace_changed("gone")  # removed since: skipped, not an error
    assert backing.synced == []  # nothing synced one by one
    journaling.namespace_moved("a", "c/a")  # the directory a moved to c/a
    (tmp_path / "a").rename(tmp_path / "c" / "a")
    trio.run(journaling.durable_dir, "e")
    assert sorted(backing.synced) == ["", "c/a/b", "e"]
    backing.synced.clear()
    trio.run(journaling.flush_namespace)  # nothing pending any more
    assert backing.synced == []


def test_no_durability_no_syncs(tmp_path: Path) -> None:
    backing = Recording(str(tmp_path))
    journaling = Journaling(Journal(str(tmp_path / "journal.jsonl")), backing, durable=False)
    journaling.namespace_changed("")
    trio.run(journaling.durable_dir, "")
    assert backing.synced == []
