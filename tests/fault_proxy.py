"""A fault-injecting reverse proxy for the DynamoDB JSON protocol (stdlib only).

``FaultProxy(upstream_url)`` listens on ``127.0.0.1:<free port>``, forwards every request to
``upstream_url`` and records it (:attr:`FaultProxy.requests`; read back by operation with
:meth:`FaultProxy.payloads`, :meth:`FaultProxy.batch_writes` and :meth:`FaultProxy.key_sends`).
For calls whose operation (from the ``X-Amz-Target`` header, e.g.
``DynamoDB_20120810.BatchWriteItem``) is in ``targets``, it injects, with probability ``rate``,
one fault picked uniformly from those in ``faults`` that apply to the call:

``provisioned_throughput``
    400 ``ProvisionedThroughputExceededException``; nothing forwarded.
``throttling``
    400 ``ThrottlingException``; nothing forwarded.
``error_before``
    500 ``InternalServerError``; nothing forwarded.
``error_after``
    forwarded (the write is applied), then 500 ``InternalServerError``.
``partial_batch``
    BatchWriteItem with >= 2 requests: forward a non-empty strict subset (per-table
    grouping and order kept) and answer with the upstream's response whose
    ``UnprocessedItems`` also holds the requests not forwarded.
``drop_after``
    forwarded (the write is applied), then the connection is closed without an answer.
``partial_batch_get`` (opt-in: not in ``DEFAULT_FAULTS``)
    BatchGetItem with >= 2 keys: forward a non-empty strict subset of the keys and answer
    with the upstream's response whose ``UnprocessedKeys`` also holds the keys not
    forwarded -- what DynamoDB does to a read that exceeds its capacity. The client (the
    tool, or a plain boto3 client) must ask again for those keys.
``bad_crc`` (opt-in)
    forwarded, then the upstream answer with a wrong ``x-amz-crc32`` (botocore retries
    such answers); a negative control for the checksum handling.

Deterministic: whether a request gets a fault, which one, and how a batch is split are
decided from the request itself -- ``seed``, the operation, the body (table names left out,
so the same requests to another test's table get the same faults) and how often that same
request was seen before (a client's retry of it is the next occurrence) -- never from the
order in which concurrent requests arrive. Only ``max_faults`` (a global cap) depends on
arrival order.

Every answer the proxy makes or changes carries ``Content-Length`` and a correct
``x-amz-crc32`` (``zlib.crc32`` of the body as decimal), as botocore checks that header for
DynamoDB. Hop-by-hop headers are not passed on either way.

Request bodies and headers (``Host`` included) are forwarded byte for byte, so the client's
SigV4 signature stays valid -- except for ``partial_batch``/``partial_batch_get``, which
rewrite the body and so break the signature. DynamoDB Local and moto do not verify
signatures, so that is fine for them; the proxy must not be put in front of an endpoint that
does (it never should be: it is a test tool).
"""

from __future__ import annotations

import hashlib
import http.client
import json
import random
import socket
import threading
import zlib
from collections import Counter
from collections.abc import Callable, Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from waiting import wait_for

TARGET_PREFIX = "DynamoDB_20120810."
ERROR_PREFIX = "com.amazonaws.dynamodb.v20120810#"

PROVISIONED_THROUGHPUT = "provisioned_throughput"
THROTTLING = "throttling"
ERROR_BEFORE = "error_before"
ERROR_AFTER = "error_after"
PARTIAL_BATCH = "partial_batch"
DROP_AFTER = "drop_after"
PARTIAL_BATCH_GET = "partial_batch_get"
BAD_CRC = "bad_crc"

DEFAULT_FAULTS: tuple[str, ...] = (
    PROVISIONED_THROUGHPUT,
    THROTTLING,
    ERROR_BEFORE,
    ERROR_AFTER,
    PARTIAL_BATCH,
    DROP_AFTER,
)
ALL_FAULTS: tuple[str, ...] = (*DEFAULT_FAULTS, PARTIAL_BATCH_GET, BAD_CRC)
DEFAULT_TARGETS: tuple[str, ...] = (
    "BatchWriteItem",
    "PutItem",
    "Query",
    "GetItem",
    "BatchGetItem",
)

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
    }
)


def crc32_header(body: bytes) -> str:
    return str(zlib.crc32(body) & 0xFFFFFFFF)


def error_body(kind: str, message: str) -> bytes:
    return json.dumps({"__type": ERROR_PREFIX + kind, "message": message}).encode()


class FaultProxy:
    """See the module docstring. Thread-safe; use as a context manager or call stop()."""

    def __init__(
        self,
        upstream_url: str,
        *,
        seed: int = 0,
        rate: float = 0.3,
        faults: Iterable[str] = DEFAULT_FAULTS,
        targets: Iterable[str] | None = DEFAULT_TARGETS,
        max_faults: int | None = None,
        upstream_timeout: float = 30.0,
        only: Callable[[str, bytes], bool] | None = None,
    ) -> None:
        """
        :param upstream_url: ``http://host:port`` of the engine.
        :param seed: mixed into every per-request decision.
        :param rate: share of matching calls that get a fault (1.0 = all of them).
        :param faults: fault names to pick from (see module docstring).
        :param targets: operation names to consider (``None``: every operation).
        :param max_faults: stop injecting after this many faults in total.
        :param only: if given, a fault goes only into requests for which ``only(operation,
            body)`` is true (e.g. the key reads of a BatchGetItem, not the IMAGE-item check).
        """
        self._only = only
        parts = urlsplit(upstream_url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"upstream must be http://host:port, not {upstream_url!r}")
        self.upstream_url = upstream_url
        self._upstream = (parts.hostname, parts.port or 80)
        self._upstream_timeout = upstream_timeout
        self._lock = threading.Lock()
        self._seed = seed
        self._seen: Counter[bytes] = Counter()  # request digest -> times seen
        self._requests: list[tuple[str, bytes]] = []
        self._rate = 0.0
        self._faults: tuple[str, ...] = ()
        self._targets: frozenset[str] | None = None
        self._max_faults: int | None = None
        self.configure(rate=rate, faults=faults, targets=targets, max_faults=max_faults)
        self._injected: Counter[str] = Counter()
        self._calls: Counter[str] = Counter()
        self._forwarded: Counter[str] = Counter()
        self._events: list[tuple[str, str]] = []

        self._server = _Server(("127.0.0.1", 0), _Handler, self)
        host, port = self._server.server_address[:2]
        self.url = f"http://{host!s}:{port}"
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"FaultProxy:{port}",
            daemon=True,
        )
        self._thread.start()

    # ------------------------------------------------------------------ config & stats

    def configure(
        self,
        *,
        rate: float | None = None,
        faults: Iterable[str] | None = None,
        targets: Iterable[str] | bool | None = False,
        max_faults: int | bool | None = False,
    ) -> None:
        """Change settings while running (``targets``/``max_faults``: False = unchanged)."""
        with self._lock:
            if rate is not None:
                if not 0.0 <= rate <= 1.0:
                    raise ValueError(f"rate must be within [0, 1], not {rate}")
                self._rate = rate
            if faults is not None:
                faults = tuple(faults)
                unknown = set(faults) - set(ALL_FAULTS)
                if unknown:
                    raise ValueError(f"unknown faults {sorted(unknown)}; known: {ALL_FAULTS}")
                self._faults = faults
            if not isinstance(targets, bool):
                self._targets = None if targets is None else frozenset(targets)
            if not isinstance(max_faults, bool):
                self._max_faults = max_faults

    def disable(self) -> None:
        """Stop injecting faults (the proxy keeps forwarding)."""
        self.configure(rate=0.0)

    @property
    def injected(self) -> dict[str, int]:
        """Faults injected so far, by fault name (a snapshot)."""
        with self._lock:
            return dict(self._injected)

    @property
    def calls(self) -> dict[str, int]:
        """Calls received so far, by operation name (a snapshot)."""
        with self._lock:
            return dict(self._calls)

    @property
    def forwarded(self) -> dict[str, int]:
        """Calls (fully or partly) forwarded upstream, by operation name."""
        with self._lock:
            return dict(self._forwarded)

    @property
    def events(self) -> list[tuple[str, str]]:
        """``(operation, fault)`` of every injected fault, in order."""
        with self._lock:
            return list(self._events)

    @property
    def requests(self) -> list[tuple[str, dict[str, Any]]]:
        """``(operation, parsed body)`` of every request received, in arrival order."""
        with self._lock:
            received = list(self._requests)
        return [(operation, json.loads(body) if body else {}) for operation, body in received]

    def payloads(self, operation: str) -> list[dict[str, Any]]:
        """The parsed bodies of every ``operation`` request received, in arrival order."""
        return [payload for op, payload in self.requests if op == operation]

    def batch_writes(self) -> list[list[dict[str, Any]]]:
        """The put items of every BatchWriteItem received (all tables), in arrival order."""
        return [[req["PutRequest"]["Item"] for reqs in payload["RequestItems"].values() for req in reqs
                 if "PutRequest" in req]
                for payload in self.payloads("BatchWriteItem")]

    def key_sends(self, operation: str) -> Counter[tuple[str, str]]:
        """How often each item key (PK, SK) was sent in BatchWriteItem or BatchGetItem
        requests, resends included."""
        sends: Counter[tuple[str, str]] = Counter()
        for payload in self.payloads(operation):
            for spec in payload["RequestItems"].values():
                if isinstance(spec, dict):  # BatchGetItem: {"Keys": [...]}
                    keys = spec["Keys"]
                else:  # BatchWriteItem: [{"PutRequest": {"Item": ...}}]
                    keys = [r["PutRequest"]["Item"] for r in spec]
                sends.update((k["PK"]["S"], k["SK"]["S"]) for k in keys)
        return sends

    def total_injected(self) -> int:
        with self._lock:
            return sum(self._injected.values())

    def reset_counters(self) -> None:
        with self._lock:
            self._injected.clear()
            self._calls.clear()
            self._forwarded.clear()
            self._events.clear()
            self._requests.clear()

    # ------------------------------------------------------------------ lifecycle

    def stop(self) -> None:
        """Stop listening and cut open client connections (idempotent)."""
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join(timeout=10)
        self._server.server_close()
        self._server.close_open_connections()

    def wait_idle(self, timeout: float = 60.0) -> None:
        """Wait until no client connection is open: every request the proxy received has been
        forwarded and answered (after a client is killed, what it had sent still reaches the
        engine; this waits for that)."""
        wait_for(lambda: not self._server.open_connections(), timeout=timeout, interval=0.01,
                 what="the proxy's client connections to close",
                 details=lambda: f"{self._server.open_connections()} still open")

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ internals

    def _choose(self, operation: str, body: bytes) -> tuple[str | None, random.Random]:
        """Record the call and decide which fault (if any) to inject. Returns the fault and
        the request's own random source (for splitting a batch)."""
        digest = _request_digest(operation, body)
        with self._lock:
            self._calls[operation] += 1
            self._requests.append((operation, body))
            occurrence = self._seen[digest]
            self._seen[digest] += 1
            rng = random.Random(f"{self._seed}:{digest.hex()}:{occurrence}")
            if self._targets is not None and operation not in self._targets:
                return None, rng
            if self._only is not None and not self._only(operation, body):
                return None, rng
            if self._max_faults is not None and sum(self._injected.values()) >= self._max_faults:
                return None, rng
            if not self._faults or self._rate <= 0.0 or rng.random() >= self._rate:
                return None, rng
            applicable = [f for f in self._faults if _applies(f, operation, body)]
            if not applicable:
                return None, rng
            fault = rng.choice(applicable)
            self._injected[fault] += 1
            self._events.append((operation, fault))
            return fault, rng

    def _count_forwarded(self, operation: str) -> None:
        with self._lock:
            self._forwarded[operation] += 1

    def _forward(
        self, method: str, path: str, headers: list[tuple[str, str]], body: bytes
    ) -> tuple[int, str, list[tuple[str, str]], bytes]:
        conn = http.client.HTTPConnection(*self._upstream, timeout=self._upstream_timeout)
        try:
            out_headers = [(k, v) for k, v in headers if k.lower() not in HOP_BY_HOP]
            out_headers = [(k, v) for k, v in out_headers if k.lower() != "content-length"]
            out_headers.append(("Content-Length", str(len(body))))
            conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
            for k, v in out_headers:
                conn.putheader(k, v)
            conn.endheaders(body)
            resp = conn.getresponse()
            data = resp.read()
            resp_headers = [
                (k, v)
                for k, v in resp.getheaders()
                if k.lower() not in HOP_BY_HOP and k.lower() != "content-length"
            ]
            return resp.status, resp.reason, resp_headers, data
        finally:
            conn.close()


def _request_digest(operation: str, body: bytes) -> bytes:
    """SHA-256 of the operation and the body without its table names."""
    try:
        payload = json.loads(body) if body else {}
    except ValueError:
        payload = None
    if isinstance(payload, dict):
        payload.pop("TableName", None)
        if isinstance(payload.get("RequestItems"), dict):
            payload["RequestItems"] = list(payload["RequestItems"].values())
        body = json.dumps(payload, sort_keys=True).encode()
    return hashlib.sha256(operation.encode() + b"\0" + body).digest()


def _applies(fault: str, operation: str, body: bytes) -> bool:
    if fault == PARTIAL_BATCH:
        return operation == "BatchWriteItem" and _count_batch(body, "write") >= 2
    if fault == PARTIAL_BATCH_GET:
        return operation == "BatchGetItem" and _count_batch(body, "get") >= 2
    return True


def _count_batch(body: bytes, kind: str) -> int:
    try:
        request_items = json.loads(body).get("RequestItems") or {}
    except ValueError:
        return 0
    if kind == "write":
        return sum(len(reqs) for reqs in request_items.values())
    return sum(len(spec.get("Keys", [])) for spec in request_items.values())


def _split(rng: random.Random, count: int) -> set[int]:
    """Indices (of ``count`` >= 2) to forward: a non-empty strict subset."""
    return set(rng.sample(range(count), rng.randint(1, count - 1)))


def _split_write_batch(body: bytes, keep: set[int]) -> tuple[bytes, dict[str, list[Any]]]:
    """Body with only the ``keep`` requests (by flat index) and the held-back requests."""
    payload = json.loads(body)
    forwarded: dict[str, list[Any]] = {}
    held: dict[str, list[Any]] = {}
    i = 0
    for table, reqs in payload["RequestItems"].items():
        for req in reqs:
            (forwarded if i in keep else held).setdefault(table, []).append(req)
            i += 1
    payload["RequestItems"] = forwarded
    return json.dumps(payload).encode(), held


def _split_get_batch(body: bytes, keep: set[int]) -> tuple[bytes, dict[str, dict[str, Any]]]:
    payload = json.loads(body)
    forwarded: dict[str, dict[str, Any]] = {}
    held: dict[str, dict[str, Any]] = {}
    i = 0
    for table, spec in payload["RequestItems"].items():
        for key in spec.get("Keys", []):
            target = forwarded if i in keep else held
            target.setdefault(table, {**spec, "Keys": []})["Keys"].append(key)
            i += 1
    payload["RequestItems"] = forwarded
    return json.dumps(payload).encode(), held


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], handler: type, proxy: FaultProxy) -> None:
        self.proxy = proxy
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()
        super().__init__(address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._open_lock:
            self._open.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._open_lock:
            self._open.discard(request)
        super().shutdown_request(request)

    def open_connections(self) -> int:
        with self._open_lock:
            return len(self._open)

    def close_open_connections(self) -> None:
        """Cut kept-alive client connections (their handler threads would serve on)."""
        with self._open_lock:
            sockets = list(self._open)
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # headers and body go out in separate writes; without TCP_NODELAY, Nagle plus
    # delayed ACKs cost ~40 ms per answer.
    disable_nagle_algorithm = True
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass  # keep test output quiet

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def _handle(self) -> None:
        proxy = self.server.proxy
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        target = self.headers.get("X-Amz-Target") or ""
        operation = target[len(TARGET_PREFIX) :] if target.startswith(TARGET_PREFIX) else target
        headers = list(self.headers.items())

        fault, rng = proxy._choose(operation, body)

        if fault == PROVISIONED_THROUGHPUT:
            self._error(
                400,
                "ProvisionedThroughputExceededException",
                "The level of configured provisioned throughput for the table was exceeded. "
                "(injected by FaultProxy)",
            )
            return
        if fault == THROTTLING:
            self._error(400, "ThrottlingException", "Rate exceeded (injected by FaultProxy)")
            return
        if fault == ERROR_BEFORE:
            self._error(500, "InternalServerError", "Internal server error (injected before)")
            return

        held_writes: dict[str, list[Any]] = {}
        held_gets: dict[str, dict[str, Any]] = {}
        if fault == PARTIAL_BATCH:
            body, held_writes = _split_write_batch(body, _split(rng, _count_batch(body, "write")))
        elif fault == PARTIAL_BATCH_GET:
            body, held_gets = _split_get_batch(body, _split(rng, _count_batch(body, "get")))

        try:
            status, reason, resp_headers, data = proxy._forward(self.command, self.path, headers, body)
        except (OSError, http.client.HTTPException) as exc:
            self._error(502, "InternalServerError", f"FaultProxy upstream error: {exc!r}")
            return
        proxy._count_forwarded(operation)

        if fault == ERROR_AFTER:
            self._error(500, "InternalServerError", "Internal server error (injected after)")
            return
        if fault == DROP_AFTER:
            self._drop()
            return
        if fault == BAD_CRC:
            self._send(status, reason, resp_headers, data, crc=str((zlib.crc32(data) + 1) & 0xFFFFFFFF))
            return
        if (held_writes or held_gets) and status == 200:
            payload = json.loads(data)
            if held_writes:
                unprocessed = payload.get("UnprocessedItems") or {}
                for table, reqs in held_writes.items():
                    unprocessed.setdefault(table, []).extend(reqs)
                payload["UnprocessedItems"] = unprocessed
            if held_gets:
                unprocessed_keys = payload.get("UnprocessedKeys") or {}
                for table, spec in held_gets.items():
                    if table in unprocessed_keys:
                        unprocessed_keys[table]["Keys"].extend(spec["Keys"])
                    else:
                        unprocessed_keys[table] = spec
                payload["UnprocessedKeys"] = unprocessed_keys
            data = json.dumps(payload).encode()
            self._send(status, reason, resp_headers, data, crc=crc32_header(data))
            return
        self._send(status, reason, resp_headers, data, crc=None)

    def _send(
        self,
        status: int,
        reason: str,
        headers: list[tuple[str, str]],
        body: bytes,
        *,
        crc: str | None,
    ) -> None:
        """Send an answer; ``crc`` replaces upstream's x-amz-crc32 unless None."""
        self.send_response_only(status, reason)
        for k, v in headers:
            if crc is not None and k.lower() == "x-amz-crc32":
                continue
            self.send_header(k, v)
        if crc is not None:
            self.send_header("x-amz-crc32", crc)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()

    def _error(self, status: int, kind: str, message: str) -> None:
        body = error_body(kind, message)
        headers = [
            ("Content-Type", "application/x-amz-json-1.0"),
            ("x-amzn-RequestId", "FAULTPROXY"),
        ]
        self._send(status, "Injected", headers, body, crc=crc32_header(body))

    def _drop(self) -> None:
        """Close the connection without any answer."""
        self.close_connection = True
        try:
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
