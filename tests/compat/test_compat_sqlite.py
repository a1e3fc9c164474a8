"""SQLite inside a mount (issue 9): one process, and concurrent processes
under the shared policy, with the rollback journal and with WAL."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from tests.compat.programs import need, sh, version
from tests.support.mount import Mount
from tests.support.procs import open_barrier

ROWS = 500

# One writer: waits for "go", inserts ROWS rows, one transaction each, with
# a busy timeout so that it waits for the other writer's lock.
INSERTER = textwrap.dedent("""
    import sqlite3, sys
    path, who, rows = sys.argv[1], sys.argv[2], int(sys.argv[3])
    con = sqlite3.connect(path, timeout=60, isolation_level=None)
    con.execute("pragma busy_timeout = 60000")
    print("ready", flush=True)
    sys.stdin.readline()
    for i in range(rows):
        con.execute("insert into t (who, i) values (?, ?)", (who, i))
    con.close()
    print("done", flush=True)
""")


def test_sqlite3_one_process_1000_rows_in_a_transaction(mount: Mount) -> None:
    need("sqlite3")
    inserts = "".join(f"insert into t values ({i}, 'row {i}');" for i in range(1000))
    sh(f"sqlite3 app.db \"create table t (id integer primary key, v text); begin; {inserts} "
       "commit;\"", mount.mnt)
    out = sh("sqlite3 app.db 'select count(*), sum(id) from t; pragma integrity_check;'",
             mount.mnt).stdout
    assert out == f"1000|{sum(range(1000))}\nok\n"
    assert os.getxattr(mount.path("app.db"), "user.fencefs.policy") == b"shared"
    assert version(mount.path("app.db")) >= 1
    assert not os.path.exists(mount.path("app.db-journal"))


@pytest.mark.parametrize("mode", ["delete", "wal"])
def test_two_processes_insert_concurrently(mount: Mount, mode: str) -> None:
    need("sqlite3")
    db = mount.path("agents.db")
    sh(f"sqlite3 agents.db 'pragma journal_mode = {mode}; create table t (who text, i int);'",
       mount.mnt)
    procs = [subprocess.Popen([sys.executable, "-c", INSERTER, db, who, str(ROWS)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
             for who in ("a", "b")]
    for proc in procs:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    open_barrier(procs)
    for proc in procs:
        out, _ = proc.communicate(timeout=120)
        assert out.strip() == "done"
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
    code = textwrap.dedent("""
        import sqlite3, sys
        path = sys.argv[1]
        a = sqlite3.connect(path, isolation_level=None)
        a.execute("create table t (x)")
        b = sqlite3.connect(path, isolation_level=None)
        b.execute("select count(*) from t").fetchall()
        a.execute("insert into t values (1)")
        try:
            b.execute("insert into t values (2)")
            print("inserted")
        except sqlite3.Error as e:
            print(type(e).__name__, e)
    """)
    out = subprocess.run([sys.executable, "-c", code, mount.path("app.db")],
                         capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "OperationalError disk I/O error", out
    wal = subprocess.run(["sqlite3", "w.db", "pragma journal_mode = wal; create table t (x);"],
                         cwd=mount.mnt, capture_output=True, text=True)
    assert wal.returncode != 0 and "disk I/O error" in wal.stderr
