"""Test certificates made with openssl: a CA, a server certificate for
127.0.0.1 (also usable as a client certificate, as etcd's gateway needs),
and a client certificate."""

from __future__ import annotations

import subprocess
from pathlib import Path

_EC = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]


def _run(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _signed(d: Path, name: str, cn: str, ext: str) -> None:
    (d / f"{name}.ext").write_text(ext)
    subject = f"/CN={cn}" if cn else "/O=fencefs test"
    _run("req", *_EC, "-keyout", f"{name}-key.pem", "-out", f"{name}.csr", "-subj", subject,
         cwd=d)
    _run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca-key.pem",
         "-CAcreateserial", "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext",
         cwd=d)


def make_certs(d: Path, ca_name: str = "fencefs test CA") -> Path:
    """ca.pem, server.pem/server-key.pem, client.pem/client-key.pem in ``d``."""
    d.mkdir(parents=True, exist_ok=True)
    _run("req", "-x509", *_EC, "-keyout", "ca-key.pem", "-out", "ca.pem", "-days", "2",
         "-subj", f"/CN={ca_name}", cwd=d)
    # the server certificate is also the gateway's client certificate
    # towards etcd's own gRPC server: clientAuth too
    _signed(d, "server", "", "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
            "extendedKeyUsage=serverAuth,clientAuth\n")
    # no CN on the client certificate either: with authentication on, the
    # gateway refuses a certificate with a CN (the user comes from the password)
    _signed(d, "client", "", "extendedKeyUsage=clientAuth\n")
    return d
