"""Python and Node.js file idioms inside a mount (issue 9), and a reader
that never sees a half-written version of a file rewritten in place."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

from tests.compat.programs import need, read, version
from tests.support.mount import Mount
from tests.support.procs import run_py


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_python_json_load_modify_dump(mount: Mount) -> None:
    path = mount.seed("memory.json", '{"facts": ["a"]}')
    code = textwrap.dedent("""
        import json, sys
        with open(sys.argv[1]) as f:
            doc = json.load(f)
        doc["facts"].append("b")
        with open(sys.argv[1], "w") as f:
            json.dump(doc, f)
    """)
    ok(run_py(code, path))
    ok(run_py(code, path))
    assert read(path) == '{"facts": ["a", "b", "b"]}'
    assert version(path) == 3


def test_python_tempfile_os_replace_copyfile_move(mount: Mount) -> None:
    os.mkdir(mount.path("archive"))
    target = mount.seed("plan.md", "old\n")
    code = textwrap.dedent("""
        import os, shutil, sys, tempfile
        target = sys.argv[1]
        d = os.path.dirname(target)
        # the atomic-write idiom, replacing while the temporary file is open
        with tempfile.NamedTemporaryFile("w", dir=d, delete=False, suffix=".tmp") as f:
            f.write("new\\n")
            f.flush()
            os.fsync(f.fileno())
            os.replace(f.name, target)
        fd, tmp = tempfile.mkstemp(dir=d)
        with os.fdopen(fd, "w") as f:
            f.write("newer\\n")
        os.replace(tmp, target)
        shutil.copyfile(target, os.path.join(d, "copy.md"))
        shutil.copy2(target, os.path.join(d, "copy2.md"))
        shutil.move(os.path.join(d, "copy.md"), os.path.join(d, "moved.md"))
        shutil.move(os.path.join(d, "moved.md"), os.path.join(d, "archive"))
        shutil.copytree(os.path.join(d, "archive"), os.path.join(d, "archive2"))
        shutil.rmtree(os.path.join(d, "archive2"))
    """)
    ok(run_py(code, target))
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


# The rewriter holds one read-write handle and, every 50 ms, rewrites the
# whole file (a different length each time) and fsyncs it.
REWRITER = textwrap.dedent("""
    import os, sys, time
    fd = os.open(sys.argv[1], os.O_RDWR)
    for n in range(int(sys.argv[2])):
        body = (f"{n:06d}" * (500 + 37 * (n % 11))).encode()
        data = b"BEGIN %d %d\\n" % (n, len(body)) + body + b"\\nEND\\n"
        os.pwrite(fd, data, 0)
        os.ftruncate(fd, len(data))
        os.fsync(fd)
        time.sleep(0.05)
    os.close(fd)
    print("done", flush=True)
""")

# The reader opens, reads and closes the file over and over until the
# rewriter is done, and checks that every read is one whole version.
READER = textwrap.dedent("""
    import os, sys
    path, stop = sys.argv[1], sys.argv[2]
    seen = set()
    while not os.path.exists(stop):
        with open(path, "rb") as f:
            data = f.read()
        head, _, rest = data.partition(b"\\n")
        _, n, size = head.split()
        body, tail = rest[:int(size)], rest[int(size):]
        if tail != b"\\nEND\\n" or body != b"%06d" % int(n) * (len(body) // 6) \\
                or len(body) != 6 * (500 + 37 * (int(n) % 11)):
            print("TORN", n, len(data), flush=True)
            sys.exit(1)
        seen.add(int(n))
    print(len(seen), flush=True)
""")


def test_reader_sees_only_whole_versions_of_a_file_rewritten_in_place(mount: Mount,
                                                                       tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = mount.seed("status.txt", f"BEGIN 0 3000\n{'000000' * 500}\nEND\n")
    stop = tmp_path / "stop"
    reader = subprocess.Popen([sys.executable, "-c", READER, path, str(stop)],
                              stdout=subprocess.PIPE, text=True)
    rounds = 40
    try:
        writer = run_py(REWRITER, path, str(rounds), timeout=60)
        assert writer.stdout.strip() == "done", writer.stderr
    finally:
        stop.touch()
        out, _ = reader.communicate(timeout=30)
    assert reader.returncode == 0, out
    assert int(out) >= 5  # it did see the file move on, many times
    assert version(path) == 1 + rounds
