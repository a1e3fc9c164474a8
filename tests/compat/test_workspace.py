"""A coding agent's workspace inside a mount (issue 17): a virtualenv whose
interpreter is a symlink out of the mount, and pip installing into it."""

from __future__ import annotations

import base64
import hashlib
import os
import subprocess
import sys
import zipfile
from pathlib import Path

from tests.support.mount import Mount

MODULE = 'VALUE = "installed inside fencefs"\n\ndef main():\n    print(VALUE)\n'


def _record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def make_wheel(into: Path) -> Path:
    """A tiny pure-Python wheel with a console script, built by hand (no
    build backend, no network)."""
    dist = "tinypkg-0.1.dist-info"
    files = {
        "tinypkg/__init__.py": MODULE.encode(),
        f"{dist}/METADATA": b"Metadata-Version: 2.1\nName: tinypkg\nVersion: 0.1\n",
        f"{dist}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                         b"Tag: py3-none-any\n",
        f"{dist}/entry_points.txt": b"[console_scripts]\ntinycmd = tinypkg:main\n",
    }
    record = [_record_line(name, data) for name, data in files.items()]
    record.append(f"{dist}/RECORD,,")
    files[f"{dist}/RECORD"] = ("\n".join(record) + "\n").encode()
    wheel = into / "tinypkg-0.1-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
    return wheel


def run(*cmd: str | os.PathLike[str], cwd: Path | None = None) -> str:
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1"}
    env.pop("PYTHONPATH", None)
    result = subprocess.run([str(c) for c in cmd], capture_output=True, text=True,
                            timeout=600, cwd=cwd, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout + result.stderr


def test_venv_with_a_symlinked_interpreter_and_pip_install(mount: Mount,
                                                           tmp_path: Path) -> None:
    venv = mount.mnt / "venv"
    out = run(sys.executable, "-m", "venv", venv)
    assert "Unable to symlink" not in out
    python = venv / "bin" / "python"
    assert python.is_symlink()  # not a copy: venv's fallback when symlink() fails
    assert os.path.samefile(python, sys.executable)  # followed out of the mount
    assert run(python, "-c", "import sys; print(sys.prefix)").strip() == str(venv)

    wheel = make_wheel(tmp_path)
    run(python, "-m", "pip", "install", "--no-index", "--no-deps", wheel)
    assert run(python, "-c", "import tinypkg; print(tinypkg.VALUE)").strip() == \
        "installed inside fencefs"
    assert run(venv / "bin" / "tinycmd").strip() == "installed inside fencefs"
    installed = run(python, "-m", "pip", "list", "--format=freeze")
    assert "tinypkg==0.1" in installed
    run(python, "-m", "pip", "uninstall", "-y", "tinypkg")
    assert not (venv / "bin" / "tinycmd").exists()
    log = mount.log()
    assert "Traceback" not in log
