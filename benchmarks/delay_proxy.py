"""A pass-through HTTP proxy that delays every request (developer tool for the benchmark).

    python benchmarks/delay_proxy.py --upstream http://127.0.0.1:8000 --delay-ms 100

listens on 127.0.0.1 (a free port, printed as ``listening http://127.0.0.1:PORT`` on stdout),
holds every request it receives for ``--delay-ms`` before forwarding it to the upstream engine,
and passes the answer back unchanged: a round trip to AWS as a laptop sees it, in front of a
local engine.  One thread per client connection (any number of them), each with its own
kept-alive connection to the upstream, so concurrent requests wait out their delays together.
Request bytes (headers, ``Host`` included, and body) are forwarded as received, so the
client's signature stays valid.

``GET /__proxy/stats`` (not forwarded, not counted) answers JSON: requests by operation (from
the ``X-Amz-Target`` header), the sum of their times in the proxy (delay included), the most
requests in flight at once, and the proxy's CPU seconds.  ``POST /__proxy/reset`` clears them.

It runs in its own process, so its work does not share a GIL with the client it serves (the
benchmark's floor writes from the benchmark's own process).  Loopback only; a test tool.
"""

from __future__ import annotations

import argparse
import http.client
import json
import socket
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

STATS_PATH = "/__proxy/stats"
RESET_PATH = "/__proxy/reset"
HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization",
                        "proxy-connection", "te", "trailer", "trailers", "transfer-encoding",
                        "upgrade", "content-length"})


class Stats:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        self.requests: Counter[str] = Counter()
        self.busy_s = 0.0
        self.in_flight = 0
        self.max_in_flight = 0
        self.errors = 0

    def start(self, operation: str) -> None:
        with self.lock:
            self.requests[operation] += 1
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)

    def done(self, seconds: float, error: bool) -> None:
        with self.lock:
            self.in_flight -= 1
            self.busy_s += seconds
            self.errors += error

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            return {"requests": dict(self.requests), "busy_s": self.busy_s,
                    "max_in_flight": self.max_in_flight, "in_flight": self.in_flight,
                    "errors": self.errors, "cpu_s": time.process_time()}


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128  # many clients connect at once; a backlog of 5 drops SYNs

    def __init__(self, upstream: tuple[str, int], delay_s: float) -> None:
        self.upstream = upstream
        self.delay_s = delay_s
        self.stats = Stats()
        super().__init__(("127.0.0.1", 0), Handler)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server: Server
    _upstream: http.client.HTTPConnection | None = None

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        if self.path == STATS_PATH:
            self._answer(200, "OK", [("Content-Type", "application/json")],
                         json.dumps(self.server.stats.snapshot()).encode())
        else:
            self._relay()

    def do_POST(self) -> None:
        if self.path == RESET_PATH:
            with self.server.stats.lock:
                self.server.stats.reset()
            self._answer(200, "OK", [], b"")
        else:
            self._relay()

    def finish(self) -> None:
        super().finish()
        if self._upstream is not None:
            self._upstream.close()

    def _relay(self) -> None:
        t0 = time.perf_counter()
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        operation = (self.headers.get("X-Amz-Target") or "").rpartition(".")[2] or "other"
        stats = self.server.stats
        stats.start(operation)
        error = True
        try:
            time.sleep(self.server.delay_s)
            headers = [(k, v) for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP]
            try:
                status, reason, resp_headers, data = self._forward(headers, body)
            except (OSError, http.client.HTTPException):
                # A kept-alive upstream connection may have been closed: one fresh try.
                self._close_upstream()
                try:
                    status, reason, resp_headers, data = self._forward(headers, body)
                except (OSError, http.client.HTTPException) as exc:
                    self._close_upstream()
                    msg = json.dumps({"__type": "InternalServerError",
                                      "message": f"delay_proxy upstream error: {exc!r}"})
                    self._answer(502, "Bad Gateway", [("Content-Type", "application/x-amz-json-1.0")],
                                 msg.encode())
                    return
            self._answer(status, reason, resp_headers, data)
            error = False
        finally:
            stats.done(time.perf_counter() - t0, error)

    def _forward(self, headers: list[tuple[str, str]],
                 body: bytes) -> tuple[int, str, list[tuple[str, str]], bytes]:
        if self._upstream is None:
            self._upstream = http.client.HTTPConnection(*self.server.upstream, timeout=120)
            self._upstream.connect()
            assert self._upstream.sock is not None
            self._upstream.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn = self._upstream
        conn.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
        for k, v in headers:
            conn.putheader(k, v)
        conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)  # headers and body in one send
        resp = conn.getresponse()
        data = resp.read()
        if resp.will_close:
            self._close_upstream()
        resp_headers = [(k, v) for k, v in resp.getheaders() if k.lower() not in HOP_BY_HOP]
        return resp.status, resp.reason, resp_headers, data

    def _close_upstream(self) -> None:
        if self._upstream is not None:
            self._upstream.close()
            self._upstream = None

    def _answer(self, status: int, reason: str, headers: list[tuple[str, str]], body: bytes) -> None:
        lines = [f"HTTP/1.1 {status} {reason}"]
        lines += [f"{k}: {v}" for k, v in headers]
        lines.append(f"Content-Length: {len(body)}")
        self.wfile.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--upstream", required=True, help="http://127.0.0.1:PORT of the engine")
    p.add_argument("--delay-ms", type=float, default=100.0,
                   help="hold every request this long before forwarding it (default 100)")
    args = p.parse_args(argv)
    parts = urlsplit(args.upstream)
    if parts.scheme != "http" or parts.hostname not in ("127.0.0.1", "localhost", "::1"):
        p.error("--upstream must be http:// on a loopback address")
    server = Server((parts.hostname or "127.0.0.1", parts.port or 80), args.delay_ms / 1000)
    print(f"listening http://127.0.0.1:{server.server_address[1]}", flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
