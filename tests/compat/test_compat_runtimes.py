"""Python and Node.js file idioms inside a mount (issue 9), and a reader
that never sees a half-written version of a file rewritten in place."""

from __future__ import annotations

import os
import subprocess
import textwrap

from tests.compat.programs import need, read, version
from tests.support.agent import Agent, run_agent
from tests.support.mount import Mount


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_python_json_load_modify_dump(mount: Mount) -> None:
    path = mount.seed("memory.json", '{"facts": ["a"]}')
    # json.load, append to a list, json.dump back (open "w"): twice, by two processes
    for _ in range(2):
        assert run_agent([["json_append", path, "facts", "b"]]) == [{"ok": None}]
    assert read(path) == '{"facts": ["a", "b", "b"]}'
    assert version(path) == 3


def test_python_tempfile_os_replace_copyfile_move(mount: Mount) -> None:
    os.mkdir(mount.path("archive"))
    target = mount.seed("plan.md", "old\n")
    # NamedTemporaryFile + os.replace while open, mkstemp + os.replace,
    # shutil.copyfile, copy2, move (twice), copytree, rmtree
    assert run_agent([["python_file_idioms", target]]) == [{"ok": None}]
    assert read(target) == "newer\n"
    assert read(mount.path("archive/moved.md")) == "newer\n"
    assert os.stat(mount.path("copy2.md")).st_mtime_ns == os.stat(target).st_mtime_ns
    assert sorted(os.listdir(mount.mnt)) == [".fencefs", "archive", "copy2.md", "plan.md"]
    assert version(target) == 3


def test_node_write_append_rename(mount: Mount) -> None:
    need("node")
    script = textwrap.dedent("""
        const fs = require("fs");
        fs.writeFileSync("notes.txt", "one\\n");
        fs.appendFileSync("notes.txt", "two\\n");
        fs.appendFileSync("notes.txt", "three\\n");
        fs.writeFileSync("notes.txt.tmp", fs.readFileSync("notes.txt", "utf8").toUpperCase());
        fs.renameSync("notes.txt.tmp", "notes.txt");
        fs.writeFileSync("data.json", JSON.stringify({n: 1}));
        const doc = JSON.parse(fs.readFileSync("data.json", "utf8"));
        doc.n += 1;
        fs.writeFileSync("data.json", JSON.stringify(doc));
        process.stdout.write(fs.readFileSync("notes.txt", "utf8"));
    """)
    out = subprocess.run(["node", "-e", script], cwd=mount.mnt, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout == "ONE\nTWO\nTHREE\n"
    assert read(mount.path("data.json")) == '{"n":2}'
    assert version(mount.path("notes.txt")) == 4


def test_reader_sees_only_whole_versions_of_a_file_rewritten_in_place(mount: Mount,
                                                                       tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = mount.seed("status.txt", f"BEGIN 0 3000\n{'000000' * 500}\nEND\n")
    stop = tmp_path / "stop"
    # The reader opens, reads and closes the file over and over until the
    # rewriter is done, and checks that every read is one whole version.
    reader = Agent()
    reader.send("read_whole_versions", path, str(stop))
    rounds = 40
    try:
        # The rewriter holds one read-write handle and, every 50 ms, rewrites
        # the whole file (a different length each time) and fsyncs it.
        assert run_agent([["rewrite_in_place", path, rounds]]) == [{"ok": rounds}]
    finally:
        stop.touch()
        answer = reader.answer()
        assert reader.close() == 0
    assert "ok" in answer, answer
    assert answer["ok"] >= 5  # it did see the file move on, many times
    assert version(path) == 1 + rounds
