"""A fault-injecting HTTP proxy for S3 tests: boto3 -> this proxy -> moto.

Loopback only. Each request whose target (path and query, URL-decoded)
contains ``match`` is faulted with probability ``rate``; every other request
is forwarded untouched (so a flow's S3 datastore can share the endpoint with a
faulted cache prefix). Faults, chosen uniformly:

* ``500``: an InternalError reply; the request never reaches the server
* ``503``: a SlowDown reply; the request never reaches the server
* ``reset``: the request reaches the server, then the connection is reset
  before any reply (a lost reply: the side effect happened)
* ``truncate``: the reply's headers promise the whole body, half of it is sent,
  then the connection closes (a reply without a body is reset instead)
* ``latency``: the reply is delayed by ``latency`` seconds

``stats`` counts requests and faults by kind.
"""

from __future__ import annotations

import http.client
import random
import socket
import struct
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

KINDS = ("500", "503", "reset", "truncate", "latency")

_ERROR_BODY = (
    '<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>%s</Code>'
    "<Message>%s</Message><RequestId>fault-proxy</RequestId></Error>"
)
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "upgrade"}


class FaultProxy:
    def __init__(
        self,
        upstream: str,
        rate: float = 0.0,
        match: str = "",
        latency: float = 0.5,
        seed: int = 0,
        kinds: tuple[str, ...] = KINDS,
    ):
        parts = urlsplit(upstream)
        self.upstream = (parts.hostname, parts.port)
        self.rate = rate
        self.match = match
        self.latency = latency
        self.kinds = kinds
        self.stats: Counter = Counter()
        #: optional (method, target, headers) -> headers, applied to every reply
        self.rewrite_headers = None
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._server = None
        self._thread = None

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return "http://%s:%d" % (host, port)

    def decide(self, target: str) -> str | None:
        """The fault for one request, or None."""
        with self._lock:
            self.stats["requests"] += 1
            if not self.match or self.match not in unquote(target):
                return None
            self.stats["matched"] += 1
            if self.rate <= 0 or self._rng.random() >= self.rate:
                return None
            kind = self._rng.choice(self.kinds)
            self.stats[kind] += 1
            self.stats["faulted"] += 1
            return kind

    def start(self) -> FaultProxy:
        proxy = self

        class Handler(_Handler):
            owner = proxy

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


class _Handler(BaseHTTPRequestHandler):
    owner: FaultProxy
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # quiet
        pass

    def _read_body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            out = bytearray()
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return bytes(out)
                out += self.rfile.read(size)
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _forward(self, body: bytes):
        conn = http.client.HTTPConnection(*self.owner.upstream, timeout=60)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
        if body or self.command in ("PUT", "POST"):
            headers["Content-Length"] = str(len(body))
        try:
            conn.request(self.command, self.path, body=body, headers=headers)
            response = conn.getresponse()
            data = response.read()
            return response.status, response.getheaders(), data
        finally:
            conn.close()

    def _reset(self) -> None:
        # SO_LINGER 0: close() sends RST, as a dropped connection does
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close_connection = True
        try:
            self.connection.close()
        except OSError:
            pass

    def _send(self, status, headers, data, truncate=False) -> None:
        if self.owner.rewrite_headers is not None:
            headers = self.owner.rewrite_headers(self.command, self.path, headers)
        self.send_response_only(status)
        for name, value in headers:
            if name.lower() in _HOP_BY_HOP or name.lower() == "content-length":
                continue
            self.send_header(name, value)
        length = dict((k.lower(), v) for k, v in headers).get("content-length")
        if self.command == "HEAD" and length is not None:
            self.send_header("Content-Length", length)
        else:
            self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data[: len(data) // 2] if truncate else data)
        self.wfile.flush()
        if truncate:
            self._reset()

    def _handle(self) -> None:
        body = self._read_body()
        kind = self.owner.decide(self.path)
        if kind in ("500", "503"):
            code, message = (
                ("InternalError", "injected fault")
                if kind == "500"
                else ("SlowDown", "Please reduce your request rate.")
            )
            data = (_ERROR_BODY % (code, message)).encode()
            self._send(int(kind), [("Content-Type", "application/xml")], data)
            return
        status, headers, data = self._forward(body)
        if kind == "reset" or (kind == "truncate" and (len(data) < 2 or self.command == "HEAD")):
            self._reset()
            return
        if kind == "latency":
            time.sleep(self.owner.latency)
        self._send(status, headers, data, truncate=kind == "truncate")

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle
