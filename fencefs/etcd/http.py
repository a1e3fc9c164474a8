"""A small HTTP/1.1 client for etcd's JSON gateway, on trio streams.

Only what the gateway needs: ``POST`` a JSON body to one of the members,
read one response (``Content-Length`` or chunked), keep the connection for
the next request. A pool of idle connections per member; http or https
(a CA bundle, a client certificate).

Why not a general client: the daemon sends one or two small requests per
commit and per write open, and a general client's per-request machinery
(request and response objects, cookies, redirects, auth hooks) cost about
0.7 ms of CPU each on this project's machines against about 0.1 ms here; on
a machine whose 2 cores also run the etcd members, that CPU was most of the
time of an etcd round trip.

Failures say whether the request may have reached the member:
``NotSent`` (the connection could not be made: nothing was sent) and
``MaybeSent`` (it broke or timed out after the request was written, or
while writing it): the caller must treat the second as ambiguous.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from urllib.parse import urlsplit

import trio

MAX_IDLE = 16           # idle connections kept per member
MAX_RESPONSE = 64 << 20


class HttpError(Exception):
    """A request failed; ``str`` says why."""


class NotSent(HttpError):
    """No connection: the request was not sent."""


class MaybeSent(HttpError):
    """The request may have reached the server (broken or timed out after writing)."""


class TlsError(HttpError):
    """The TLS handshake failed: a certificate not trusted, or refused."""


@dataclass
class Response:
    status: int
    body: bytes


def tls_context(cacert: str | None, cert: str | None, key: str | None) -> ssl.SSLContext:
    """The client's TLS context; ``OSError``/``ssl.SSLError`` for unusable files."""
    ctx = ssl.create_default_context(cafile=cacert)
    if cert:
        ctx.load_cert_chain(cert, key)
    return ctx


class _Conn:
    def __init__(self, stream: trio.abc.Stream, sock: trio.socket.SocketType) -> None:
        self.stream = stream
        self.sock = sock
        self.buf = bytearray()

    async def read_some(self) -> None:
        data = await self.stream.receive_some(65536)
        if not data:
            raise EOFError("connection closed by the server")
        self.buf += data

    async def read_line(self) -> bytes:
        while True:
            i = self.buf.find(b"\r\n")
            if i >= 0:
                line = bytes(self.buf[:i])
                del self.buf[:i + 2]
                return line
            if len(self.buf) > 65536:
                raise ValueError("header line too long")
            await self.read_some()

    async def read_exactly(self, n: int) -> bytes:
        while len(self.buf) < n:
            await self.read_some()
        data = bytes(self.buf[:n])
        del self.buf[:n]
        return data

    async def aclose(self) -> None:
        with trio.move_on_after(0.5) as scope:
            scope.shield = True
            try:
                await self.stream.aclose()
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                pass


class _Member:
    def __init__(self, url: str, tls: ssl.SSLContext | None) -> None:
        parts = urlsplit(url)
        self.url = url
        self.host = parts.hostname or ""
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.hostport = parts.netloc.encode()
        self.tls = tls if parts.scheme == "https" else None
        self.idle: list[_Conn] = []


class HttpClient:
    """POST JSON to members; one pool of kept-alive connections per member."""

    def __init__(self, urls: list[str], *, connect_timeout: float, request_timeout: float,
                 tls: ssl.SSLContext | None = None) -> None:
        self.members = [_Member(u, tls) for u in urls]
        self.connect_timeout = connect_timeout
        self.request_timeout = request_timeout

    async def aclose(self) -> None:
        for m in self.members:
            idle, m.idle = m.idle, []
            for c in idle:
                await c.aclose()

    async def _connect(self, m: _Member) -> _Conn:
        with trio.move_on_after(self.connect_timeout) as scope:
            try:
                tcp = await trio.open_tcp_stream(m.host, m.port)
            except OSError as e:
                raise NotSent(f"{type(e).__name__}: {e}") from None
            tcp.setsockopt(trio.socket.IPPROTO_TCP, trio.socket.TCP_NODELAY, 1)
            stream: trio.abc.Stream = tcp
            if m.tls is not None:
                tls = trio.SSLStream(tcp, m.tls, server_hostname=m.host)
                try:
                    await tls.do_handshake()
                except trio.BrokenResourceError as e:
                    await tcp.aclose()
                    cause = e.__cause__
                    if isinstance(cause, ssl.SSLError):
                        raise TlsError(f"TLS with {m.url}: {cause.reason or cause}") from None
                    raise NotSent(f"TLS handshake with {m.url} broke: {cause or e}") from None
                stream = tls
            return _Conn(stream, tcp.socket)
        assert scope.cancelled_caught
        raise NotSent(f"no connection to {m.url} in {self.connect_timeout} s")

    def _take_idle(self, m: _Member) -> _Conn | None:
        while m.idle:
            c = m.idle.pop()
            # an idle connection that is readable was closed by the server
            # (or holds garbage): never send on it
            if not c.buf and not c.sock.is_readable():
                return c
            c.sock.close()
        return None

    async def post(self, i: int, path: str, body: bytes,
                   headers: dict[str, str] | None = None) -> Response:
        m = self.members[i]
        conn = self._take_idle(m) or await self._connect(m)
        extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items()).encode()
        request = (b"POST " + path.encode() + b" HTTP/1.1\r\nHost: " + m.hostport
                   + b"\r\nContent-Type: application/json\r\nContent-Length: "
                   + str(len(body)).encode() + b"\r\n" + extra + b"\r\n" + body)
        keep = False
        try:
            with trio.fail_after(self.request_timeout):
                await conn.stream.send_all(request)
                resp, keep = await self._read_response(conn)
        except trio.TooSlowError:
            raise MaybeSent(f"{m.url}: no answer in {self.request_timeout} s") from None
        except trio.BrokenResourceError as e:
            cause = e.__cause__
            if isinstance(cause, ssl.SSLError) and ("ALERT" in str(cause.reason)
                                                    or "CERTIFICATE" in str(cause.reason)):
                # TLS 1.3: the server refuses our certificate (or its
                # absence) after the handshake, before reading the request
                raise TlsError(f"TLS with {m.url}: {cause.reason}") from None
            raise MaybeSent(f"{m.url}: BrokenResourceError: {cause or e}") from None
        except (trio.ClosedResourceError, OSError, EOFError,
                ValueError) as e:
            raise MaybeSent(f"{m.url}: {type(e).__name__}: {e}") from None
        finally:
            if keep and len(m.idle) < MAX_IDLE:
                m.idle.append(conn)
            else:
                conn.sock.close()
        return resp

    async def _read_response(self, conn: _Conn) -> tuple[Response, bool]:
        status_line = await conn.read_line()
        parts = status_line.split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1."):
            raise ValueError(f"not an HTTP response: {status_line[:60]!r}")
        status = int(parts[1])
        length = None
        chunked = False
        keep = parts[0] == b"HTTP/1.1"
        while True:
            line = await conn.read_line()
            if not line:
                break
            name, _, value = line.partition(b":")
            name, value = name.strip().lower(), value.strip()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding":
                chunked = b"chunked" in value.lower()
            elif name == b"connection":
                keep = value.lower() == b"keep-alive" or (keep and value.lower() != b"close")
        if chunked:
            body = bytearray()
            while True:
                size = int((await conn.read_line()).split(b";")[0], 16)
                if size == 0:
                    while await conn.read_line():
                        pass   # trailers
                    break
                body += await conn.read_exactly(size)
                await conn.read_exactly(2)
                if len(body) > MAX_RESPONSE:
                    raise ValueError("response too large")
            return Response(status, bytes(body)), keep
        if length is None:
            # until the server closes the connection
            while True:
                try:
                    await conn.read_some()
                except EOFError:
                    break
                if len(conn.buf) > MAX_RESPONSE:
                    raise ValueError("response too large")
            data = bytes(conn.buf)
            conn.buf.clear()
            return Response(status, data), False
        if length > MAX_RESPONSE:
            raise ValueError("response too large")
        return Response(status, await conn.read_exactly(length)), keep
