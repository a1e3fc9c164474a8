"""SQLite inside a mount (issue 9): one process, and concurrent processes
under the shared policy, with the rollback journal and with WAL."""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.compat.programs import need, sh, version
from tests.support.agent import Agent, run_agent
from tests.support.mount import Mount

ROWS = 500

def test_sqlite3_one_process_1000_rows_in_a_transaction(mount: Mount) -> None:
    need("sqlite3")
    inserts = "".join(f"insert into t values ({i}, 'row {i}');" for i in range(1000))
    sh("sqlite3 app.db 'create table t (id integer primary key, v text);'", mount.mnt)
    created = version(mount.path("app.db"))
    assert created >= 1  # the table's creation was written and committed
    sh(f"sqlite3 app.db \"begin; {inserts} commit;\"", mount.mnt)
    out = sh("sqlite3 app.db 'select count(*), sum(id) from t; pragma integrity_check;'",
             mount.mnt).stdout
    assert out == f"1000|{sum(range(1000))}\nok\n"
    assert os.getxattr(mount.path("app.db"), "user.fencefs.policy") == b"shared"
    # The transaction's commit made versions of the database, each journaled.
    assert version(mount.path("app.db")) > created
    commits = [e for e in mount.journal() if e["file"] == "app.db" and e["event"] == "commit"]
    assert [e["new_version"] for e in commits] == list(range(1, version(mount.path("app.db")) + 1))
    assert not os.path.exists(mount.path("app.db-journal"))


@pytest.mark.parametrize("mode", ["delete", "wal"])
def test_two_processes_insert_concurrently(mount: Mount, mode: str) -> None:
    need("sqlite3")
    db = mount.path("agents.db")
    sh(f"sqlite3 agents.db 'pragma journal_mode = {mode}; create table t (who text, i int);'",
       mount.mnt)
    # One writer each: a connection with a busy timeout (it waits for the
    # other writer's lock), then ROWS rows, one transaction each.
    procs = [Agent(), Agent()]
    try:
        for proc in procs:
            proc.ok("sqlite_open", db)
        for proc, who in zip(procs, ("a", "b"), strict=True):  # released together
            proc.send("sqlite_insert", who, ROWS)
        assert [proc.answer() for proc in procs] == [{"ok": ROWS}] * 2
    finally:
        assert [proc.close(timeout=120) for proc in procs] == [0, 0]
    out = sh("sqlite3 agents.db 'pragma journal_mode; select who, count(*), count(distinct i) "
             "from t group by who order by who; pragma integrity_check;'", mount.mnt).stdout
    assert out == f"{mode}\na|{ROWS}|{ROWS}\nb|{ROWS}|{ROWS}\nok\n"
    journal = [e for e in mount.journal() if e.get("file", "").startswith("agents.db")]
    assert not [e for e in journal if e["event"] in ("conflict", "fenced", "foreign")]


def test_without_the_shared_policy_concurrent_connections_fail(make_mount) -> None:  # type: ignore[no-untyped-def]
    """What the shared policy is for: with every file fenced, a second
    connection keeps reading its own snapshot, and its commit is refused
    (EAGAIN from fsync, which SQLite reports as a disk I/O error); WAL
    cannot even start, its index needs a shared mapping (ENODEV)."""
    need("sqlite3")
    mount = make_mount("--no-default-shared-globs")
    # Two connections; the second inserts on the snapshot it read before the
    # first inserted.
    out = run_agent([["sqlite_stale_connection", mount.path("app.db")]])
    assert out == [{"ok": "OperationalError disk I/O error"}], out
    wal = subprocess.run(["sqlite3", "w.db", "pragma journal_mode = wal; create table t (x);"],
                         cwd=mount.mnt, capture_output=True, text=True)
    assert wal.returncode != 0 and "disk I/O error" in wal.stderr
