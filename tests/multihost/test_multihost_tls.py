"""Mounts over a 3-member etcd that speaks only TLS, wants client
certificates and has authentication on (certificates made with openssl in
the test's directory): the options of ``fencefs mount`` that pass them
through, and the one-line errors when they are wrong."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from fencefs.etcd.localcluster import LocalCluster, free_ports
from tests.multihost.certs import make_certs
from tests.multihost.conftest import HostsFactory, _hosts, require_etcd

PASSWORD = "s3cret-for-tests"


def _etcdctl(cluster: LocalCluster, certs: Path, *args: str) -> None:
    subprocess.run(["etcdctl", f"--endpoints={cluster.endpoints}", f"--cacert={certs}/ca.pem",
                    f"--cert={certs}/client.pem", f"--key={certs}/client-key.pem", *args],
                   check=True, capture_output=True, env={**os.environ, "ETCDCTL_API": "3"})


@pytest.fixture(scope="module")
def tls_etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalCluster, Path]]:
    """A TLS-only etcd with client certificates and authentication; the
    user ``fencefs`` may read and write keys under ``/tls-`` only."""
    require_etcd()
    if shutil.which("openssl") is None:
        if os.environ.get("CI"):
            pytest.fail("openssl is missing")
        pytest.skip("needs openssl")
    base = tmp_path_factory.mktemp("tls-etcd")
    certs = make_certs(base / "certs")
    ports = free_ports(6)
    cluster = LocalCluster(base / "etcd", tuple(ports[:3]), tuple(ports[3:]),
                           token=uuid.uuid4().hex, die_with_parent=True, tls=certs)
    try:
        cluster.start()
        _etcdctl(cluster, certs, "user", "add", f"root:{uuid.uuid4().hex}")
        _etcdctl(cluster, certs, "user", "add", f"fencefs:{PASSWORD}")
        _etcdctl(cluster, certs, "role", "add", "fencefs")
        _etcdctl(cluster, certs, "role", "grant-permission", "fencefs", "--prefix=true",
                 "readwrite", "/tls-")
        _etcdctl(cluster, certs, "user", "grant-role", "fencefs", "fencefs")
        _etcdctl(cluster, certs, "auth", "enable")
        yield cluster, certs
    finally:
        cluster.stop()


@pytest.fixture
def tls_hosts(tmp_path: Path, tls_etcd: tuple[LocalCluster, Path]) -> Iterator[HostsFactory]:
    yield from _hosts(tmp_path, tls_etcd[0])


def _options(certs: Path, password_file: Path | None = None) -> list[str]:
    opts = ["--etcd-cacert", str(certs / "ca.pem"), "--etcd-cert", str(certs / "client.pem"),
            "--etcd-key", str(certs / "client-key.pem"), "--etcd-user", "fencefs"]
    if password_file is not None:
        opts += ["--etcd-password-file", str(password_file)]
    return opts


def test_two_hosts_over_tls_with_client_certificates_and_a_password(
        tls_hosts: HostsFactory, tls_etcd: tuple[LocalCluster, Path], tmp_path: Path) -> None:
    cluster, certs = tls_etcd
    assert all(u.startswith("https://") for u in cluster.urls)
    secret = tmp_path / "etcd-password"
    secret.write_text(PASSWORD + "\n")
    a, b = tls_hosts("--cluster", f"tls-{uuid.uuid4().hex[:8]}", *_options(certs, secret))
    # (the fixture's own --cluster comes first; the last one given wins)
    assert PASSWORD not in " ".join(a.extra)
    a.seed("plan.md", "v1 from A\n")
    assert Path(b.path("plan.md")).read_text() == "v1 from A\n"
    # a decision over TLS: B's rewrite rests on what B read, A commits meanwhile
    env = {**os.environ, "FENCEFS_AGENT": "agent-b"}
    subprocess.run(["cat", b.path("plan.md")], check=True, capture_output=True, env=env)
    a.seed("plan.md", "v2 from A\n")
    code = ("import sys\ntry:\n    open(sys.argv[1], 'w').write('v3 from B')\n"
            "except OSError as e:\n    print(e.errno)\n")
    out = subprocess.run([sys.executable, "-c", code, b.path("plan.md")], capture_output=True,
                         text=True, env=env)
    assert out.stdout.strip() == str(errno.EAGAIN)
    assert Path(a.path("plan.md")).read_text() == "v2 from A\n"
    assert int(os.getxattr(b.path("plan.md"), "user.fencefs.version")) == 2


def _mount(tmp_path: Path, cluster: LocalCluster, *opts: str, env: dict[str, str] | None = None
           ) -> tuple[subprocess.CompletedProcess[str], Path]:
    backing, mnt = tmp_path / f"b-{uuid.uuid4().hex[:6]}", tmp_path / "m"
    backing.mkdir()
    mnt.mkdir(exist_ok=True)
    proc = subprocess.run([sys.executable, "-m", "fencefs.cli", "mount", "--etcd",
                           cluster.endpoints, "--cluster", f"tls-{uuid.uuid4().hex[:8]}", *opts,
                           str(backing), str(mnt)],
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, **(env or {})})
    return proc, backing


def _one_line_exit_2(proc: subprocess.CompletedProcess[str], *words: str) -> None:
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fencefs: "), proc.stderr
    for w in words:
        assert w in lines[0], lines[0]


def test_tls_and_auth_mistakes_are_one_line_errors(
        tls_etcd: tuple[LocalCluster, Path], tmp_path: Path) -> None:
    cluster, certs = tls_etcd
    good = {"FENCEFS_ETCD_PASSWORD": PASSWORD}
    other = make_certs(tmp_path / "other-ca", ca_name="another CA")
    cases: list[tuple[list[str], dict[str, str], list[str]]] = [
        # a certificate path that does not exist
        (["--etcd-cacert", str(certs / "nope.pem"), *_options(certs)[2:]], good,
         ["--etcd-cacert", "no such file"]),
        # a file that is no certificate
        (["--etcd-cacert", str(certs / "server.ext"), *_options(certs)[2:]], good,
         ["TLS files unusable"]),
        # the wrong password (from the environment)
        (_options(certs), {"FENCEFS_ETCD_PASSWORD": "wrong"}, ["authentication failed"]),
        # no password at all
        (_options(certs), {"FENCEFS_ETCD_PASSWORD": ""}, ["no password"]),
        # a password on the command line is refused, not used
        (_options(certs)[:-1] + [f"fencefs:{PASSWORD}"], {}, ["never from the command line"]),
        # no client certificate, against members that want one
        (["--etcd-cacert", str(certs / "ca.pem"), "--etcd-user", "fencefs"], good, ["TLS"]),
        # members whose certificate our CA did not sign
        (["--etcd-cacert", str(other / "ca.pem"), *_options(certs)[2:]], good,
         ["CERTIFICATE_VERIFY_FAILED"]),
    ]
    for opts, env, words in cases:
        proc, backing = _mount(tmp_path, cluster, *opts, env=env)
        _one_line_exit_2(proc, *words)
        assert list(backing.iterdir()) == [], opts     # nothing written


def test_background_mount_keeps_the_password_out_of_every_command_line(
        tls_etcd: tuple[LocalCluster, Path], tmp_path: Path) -> None:
    """A background mount (no --foreground) with relative paths: its daemon
    gets the password file's path, never the password."""
    from fencefs.daemon import pid_file
    from tests.support.mount import mounted, require_fuse

    require_fuse()
    cluster, certs = tls_etcd
    (tmp_path / "pw").write_text(PASSWORD + "\n")
    for name in ("ca.pem", "client.pem", "client-key.pem"):
        shutil.copy(certs / name, tmp_path / name)
    (tmp_path / "backing").mkdir()
    (tmp_path / "mnt").mkdir()
    proc = subprocess.run(
        [sys.executable, "-m", "fencefs.cli", "mount", "--etcd", cluster.endpoints,
         "--cluster", f"tls-{uuid.uuid4().hex[:8]}", "--etcd-cacert", "ca.pem",
         "--etcd-cert", "client.pem", "--etcd-key", "client-key.pem", "--etcd-user", "fencefs",
         "--etcd-password-file", "pw", "backing", "mnt"],
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
        env={k: v for k, v in os.environ.items() if k != "FENCEFS_ETCD_PASSWORD"})
    mnt = tmp_path / "mnt"
    try:
        assert proc.returncode == 0, proc.stderr
        assert mounted(str(mnt))
        with open(pid_file(str(tmp_path / "backing"), str(mnt))) as f:
            pid = int(f.readline())
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        assert PASSWORD.encode() not in b" ".join(argv)
        assert str(tmp_path / "pw").encode() in argv     # the path, made absolute
        (mnt / "f").write_text("over TLS, in the background\n")
        assert (mnt / "f").read_text() == "over TLS, in the background\n"
    finally:
        done = subprocess.run([sys.executable, "-m", "fencefs.cli", "unmount", str(mnt)],
                              capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
