"""Local DynamoDB servers and small helpers for tests.

Two backends are supported:

* moto, in-process (``moto.server.ThreadedMotoServer``) -- always available;
* dynalite (npm package, run with ``node``) -- optional, installed by
  ``tests/install_dynalite.sh`` into ``<repo>/.dynalite`` (or ``$DYNALITE_DIR``).

Everything here talks to ``127.0.0.1`` only and uses dummy credentials
(``testing``/``testing``, region ``us-east-1``); it never reads real AWS
credentials or profiles.
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from decimal import Decimal
from pathlib import Path
from typing import Any, Protocol

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

REGION = "us-east-1"
DUMMY_KEY_ID = "testing"
DUMMY_SECRET = "testing"

REPO_ROOT = Path(__file__).resolve().parent.parent
#: Version installed by tests/install_dynalite.sh; keep the two in sync.
DYNALITE_VERSION = "4.0.0"
DEFAULT_DYNALITE_DIR = REPO_ROOT / ".dynalite"

GSI_NAMES = ("GSI1", "GSI2", "GSI3", "GSI4")
KEY_ATTRIBUTES = (
    "PK",
    "SK",
    "GSI1PK",
    "GSI1SK",
    "GSI2PK",
    "GSI2SK",
    "GSI3PK",
    "GSI3SK",
    "GSI4PK",
    "GSI4SK",
    "TYPE",
)


class LocalServer(Protocol):
    """What both server handles offer."""

    name: str
    url: str

    def stop(self) -> None: ...


# --------------------------------------------------------------------------- utilities


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (racy by nature)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, timeout: float = 20.0) -> None:
    """Wait until something answers HTTP at ``url`` (any status code counts)."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except urllib.error.HTTPError:
            return  # it answered, that is all we need
        except OSError as exc:  # connection refused, reset, timeout ...
            last = exc
            time.sleep(0.05)
    raise TimeoutError(f"nothing answered at {url} within {timeout}s: {last!r}")


# --------------------------------------------------------------------------- moto


class MotoServer:
    """moto's server running in a thread of this process.

    Note: moto keeps its backends in module globals, so every ThreadedMotoServer in
    one process (and ``mock_aws``) share the same tables. Use unique table names or
    :meth:`reset`.
    """

    name = "moto"

    def __init__(self) -> None:
        from moto.server import ThreadedMotoServer

        # werkzeug logs every request at INFO to stderr; that drowns test output.
        logging.getLogger("werkzeug").setLevel(logging.WARNING)
        # port=0 lets the OS pick a free port atomically; the real one is read back.
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self._server.start()
        host, port = self._server.get_host_and_port()
        self.url = f"http://{host}:{port}"
        self._stopped = False

    def reset(self) -> None:
        """Drop all state of every moto backend (all tables of every test!)."""
        req = urllib.request.Request(f"{self.url}/moto-api/reset", method="POST", data=b"")
        with urllib.request.urlopen(req, timeout=10):
            pass

    def stop(self) -> None:
        if not self._stopped:
            self._stopped = True
            self._server.stop()

    def __enter__(self) -> MotoServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_moto_server() -> MotoServer:
    """Start moto's threaded server on 127.0.0.1 and a free port."""
    return MotoServer()


# --------------------------------------------------------------------------- dynalite


def dynalite_dir() -> Path:
    return Path(os.environ.get("DYNALITE_DIR") or DEFAULT_DYNALITE_DIR)


def dynalite_cli() -> Path:
    return dynalite_dir() / "node_modules" / "dynalite" / "cli.js"


def dynalite_unavailable_reason() -> str | None:
    """``None`` if dynalite can be started, else why not (for ``pytest.skip``)."""
    if shutil.which("node") is None:
        return "node is not on PATH (dynalite needs Node.js >= 20)"
    if not dynalite_cli().is_file():
        return f"dynalite is not installed at {dynalite_dir()}; run `bash tests/install_dynalite.sh`"
    return None


class DynaliteServer:
    """A dynalite process (in-memory store) on 127.0.0.1."""

    name = "dynalite"

    def __init__(self, *, startup_timeout: float = 20.0, attempts: int = 3) -> None:
        reason = dynalite_unavailable_reason()
        if reason:
            raise RuntimeError(reason)
        node = shutil.which("node")
        assert node is not None
        self._log = tempfile.NamedTemporaryFile(prefix="dynalite-", suffix=".log", delete=False)
        self.log_path = Path(self._log.name)
        self._proc: subprocess.Popen[bytes] | None = None
        last_error = ""
        for _ in range(attempts):  # the free port may be taken by the time node binds it
            port = free_port()
            proc = subprocess.Popen(
                [
                    node,
                    str(dynalite_cli()),
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(port),
                    # no artificial CREATING/DELETING delays
                    "--createTableMs",
                    "0",
                    "--deleteTableMs",
                    "0",
                    "--updateTableMs",
                    "0",
                ],
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            url = f"http://127.0.0.1:{port}"
            try:
                self._wait(proc, url, startup_timeout)
            except Exception as exc:
                last_error = repr(exc)
                _terminate(proc)
                continue
            self._proc = proc
            self.url = url
            atexit.register(self.stop)
            return
        self._log.close()
        log = self.log_path.read_text(errors="replace")[-2000:]
        raise RuntimeError(f"dynalite did not start: {last_error}\n--- log ---\n{log}")

    @staticmethod
    def _wait(proc: subprocess.Popen[bytes], url: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"dynalite exited with code {proc.returncode}")
            try:
                wait_http(url, timeout=0.5)
                return
            except TimeoutError:
                continue
        raise TimeoutError(f"dynalite did not answer at {url} within {timeout}s")

    def stop(self) -> None:
        if self._proc is not None:
            _terminate(self._proc)
            self._proc = None
            self._log.close()
            self.log_path.unlink(missing_ok=True)

    def __enter__(self) -> DynaliteServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _terminate(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


def start_dynalite() -> DynaliteServer:
    """Start dynalite (in-memory) on 127.0.0.1; raises RuntimeError if unavailable."""
    return DynaliteServer()


# --------------------------------------------------------------------------- DynamoDB Local

#: The npm package that ships DynamoDBLocal.jar; tests/install_ddblocal.sh pins it too.
DDBLOCAL_PACKAGE = "amplify-dynamodb-simulator@2.9.30"
DEFAULT_DDBLOCAL_DIR = REPO_ROOT / ".ddblocal"


def ddblocal_dir() -> Path:
    return Path(os.environ.get("DDBLOCAL_DIR") or DEFAULT_DDBLOCAL_DIR)


def ddblocal_unavailable_reason() -> str | None:
    """``None`` if DynamoDB Local can be started, else why not."""
    if shutil.which("java") is None:
        return "java is not on PATH (DynamoDB Local needs Java 17)"
    if not (ddblocal_dir() / "DynamoDBLocal.jar").is_file():
        return f"DynamoDB Local is not installed at {ddblocal_dir()}; run `bash tests/install_ddblocal.sh`"
    return None


class DDBLocalServer:
    """AWS's DynamoDB Local (in memory, no telemetry) on 127.0.0.1.

    Tables are never deleted on it: after a DeleteTable it gets ~80x slower, so a test
    that needs a clean engine starts a fresh process instead."""

    name = "ddblocal"

    def __init__(self, *, startup_timeout: float = 60.0, attempts: int = 3) -> None:
        reason = ddblocal_unavailable_reason()
        if reason:
            raise RuntimeError(reason)
        java = shutil.which("java")
        assert java is not None
        home = ddblocal_dir()
        self._log = tempfile.NamedTemporaryFile(prefix="ddblocal-", suffix=".log", delete=False)
        self.log_path = Path(self._log.name)
        self._proc: subprocess.Popen[bytes] | None = None
        last_error = ""
        for _ in range(attempts):  # the free port may be taken by the time java binds it
            port = free_port()
            proc = subprocess.Popen(
                [java, "-Xss4m", f"-Djava.library.path={home / 'DynamoDBLocal_lib'}",
                 "-jar", str(home / "DynamoDBLocal.jar"),
                 "-inMemory", "-disableTelemetry", "-port", str(port)],
                cwd=home,
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            url = f"http://127.0.0.1:{port}"
            try:
                DynaliteServer._wait(proc, url, startup_timeout)
            except Exception as exc:
                last_error = repr(exc)
                _terminate(proc)
                continue
            self._proc = proc
            self.url = url
            atexit.register(self.stop)
            return
        self._log.close()
        log = self.log_path.read_text(errors="replace")[-2000:]
        raise RuntimeError(f"DynamoDB Local did not start: {last_error}\n--- log ---\n{log}")

    def stop(self) -> None:
        if self._proc is not None:
            _terminate(self._proc)
            self._proc = None
            self._log.close()
            self.log_path.unlink(missing_ok=True)

    def __enter__(self) -> DDBLocalServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_ddblocal() -> DDBLocalServer:
    """Start DynamoDB Local (in memory) on 127.0.0.1; raises RuntimeError if unavailable."""
    return DDBLocalServer()


# --------------------------------------------------------------------------- clients


_session_lock = threading.Lock()
_session_cache: list[boto3.session.Session] = []


def _session() -> boto3.session.Session:
    """One shared session with dummy credentials (its loader caches service models,
    which makes creating further clients ~10x faster)."""
    with _session_lock:
        if not _session_cache:
            _session_cache.append(
                boto3.session.Session(
                    aws_access_key_id=DUMMY_KEY_ID,
                    aws_secret_access_key=DUMMY_SECRET,
                    aws_session_token=None,
                    region_name=REGION,
                )
            )
        return _session_cache[0]


def make_client(
    url: str,
    *,
    max_attempts: int = 10,
    retry_mode: str = "standard",
    total_max_attempts: int | None = None,
    connect_timeout: float = 5,
    read_timeout: float = 30,
    max_pool_connections: int = 10,
) -> Any:
    """A boto3 DynamoDB client for ``url`` with dummy credentials.

    The session gets explicit keys and region, so environment credentials, profiles
    and ``~/.aws`` files do not matter (conftest scrubs AWS_* anyway).

    Retries follow botocore's ``Config(retries=...)``: ``max_attempts`` counts the
    *retries* after the first attempt (``max_attempts=2`` -> up to 3 HTTP requests);
    ``total_max_attempts``, if given, counts all attempts and wins.
    """
    retries: dict[str, Any] = {"mode": retry_mode}
    if total_max_attempts is not None:
        retries["total_max_attempts"] = total_max_attempts
    else:
        retries["max_attempts"] = max_attempts
    session = _session()
    config = Config(
        retries=retries,  # type: ignore[arg-type]
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
        max_pool_connections=max_pool_connections,
    )
    with _session_lock:  # Session.client() is not thread-safe
        return session.client("dynamodb", endpoint_url=url, config=config)


def env_for_subprocess(
    url: str | None = None,
    *,
    set_endpoint_env: bool = True,
    base: dict[str, str] | None = None,
) -> dict[str, str]:
    """Environment for running a CLI subprocess against a local endpoint.

    Starts from a copy of ``base`` (default ``os.environ``), removes every ``AWS_*``
    and ``BOTO*`` variable (credentials, profiles, config files, endpoints), then sets
    dummy credentials, region ``us-east-1``, points the config/credentials files at
    a non-existent path and disables the instance metadata lookup. With ``url`` and
    ``set_endpoint_env``, ``AWS_ENDPOINT_URL_DYNAMODB`` is set as a safety net
    (pass ``--endpoint-url`` explicitly as well if the CLI should be tested for it).
    """
    env = dict(os.environ if base is None else base)
    for key in list(env):
        if key.upper().startswith(("AWS_", "BOTO")):
            del env[key]
    nowhere = str(REPO_ROOT / ".no-such-aws-config")
    env.update(
        {
            "AWS_ACCESS_KEY_ID": DUMMY_KEY_ID,
            "AWS_SECRET_ACCESS_KEY": DUMMY_SECRET,
            "AWS_DEFAULT_REGION": REGION,
            "AWS_REGION": REGION,
            "AWS_CONFIG_FILE": nowhere,
            "AWS_SHARED_CREDENTIALS_FILE": nowhere,
            "AWS_EC2_METADATA_DISABLED": "true",
            "PYTHONUNBUFFERED": "1",
        }
    )
    if url is not None and set_endpoint_env:
        env["AWS_ENDPOINT_URL_DYNAMODB"] = url
    return env


# --------------------------------------------------------------------------- tables


def table_definition(name: str, *, streams: bool = True) -> dict[str, Any]:
    """``CreateTable`` parameters of the receipts table layout."""
    gsis: list[dict[str, Any]] = [
        {
            "IndexName": gsi,
            "KeySchema": [
                {"AttributeName": f"{gsi}PK", "KeyType": "HASH"},
                {"AttributeName": f"{gsi}SK", "KeyType": "RANGE"},
            ],
            "Projection": {"ProjectionType": "ALL"},
        }
        for gsi in GSI_NAMES
    ]
    gsis.append(
        {
            "IndexName": "GSITYPE",
            "KeySchema": [{"AttributeName": "TYPE", "KeyType": "HASH"}],
            "Projection": {"ProjectionType": "ALL"},
        }
    )
    params: dict[str, Any] = {
        "TableName": name,
        "KeySchema": [
            {"AttributeName": "PK", "KeyType": "HASH"},
            {"AttributeName": "SK", "KeyType": "RANGE"},
        ],
        "AttributeDefinitions": [{"AttributeName": a, "AttributeType": "S"} for a in KEY_ATTRIBUTES],
        "GlobalSecondaryIndexes": gsis,
        "BillingMode": "PAY_PER_REQUEST",
    }
    if streams:
        params["StreamSpecification"] = {
            "StreamEnabled": True,
            "StreamViewType": "NEW_AND_OLD_IMAGES",
        }
    return params


def create_table(client: Any, name: str, *, timeout: float = 30.0) -> dict[str, Any]:
    """Create the receipts table ``name`` and wait until it and its GSIs are ACTIVE.

    Streams are requested; if the server rejects ``StreamSpecification``, the table
    is created without it. Returns ``DescribeTable``'s ``Table``.
    """
    try:
        client.create_table(**table_definition(name, streams=True))
    except ClientError as exc:
        if exc.response["Error"]["Code"] != "ValidationException" or "tream" not in str(exc):
            raise
        client.create_table(**table_definition(name, streams=False))
    return wait_table_active(client, name, timeout=timeout)


def wait_table_active(client: Any, name: str, *, timeout: float = 30.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        table: dict[str, Any] = client.describe_table(TableName=name)["Table"]
        statuses = [table["TableStatus"]] + [
            g.get("IndexStatus", "ACTIVE") for g in table.get("GlobalSecondaryIndexes", [])
        ]
        if all(s == "ACTIVE" for s in statuses):
            return table
        if time.monotonic() > deadline:
            raise TimeoutError(f"table {name} not ACTIVE after {timeout}s: {statuses}")
        time.sleep(0.05)


def delete_table(client: Any, name: str) -> None:
    """Delete ``name``; a missing table is fine."""
    try:
        client.delete_table(TableName=name)
    except ClientError as exc:
        if exc.response["Error"]["Code"] != "ResourceNotFoundException":
            raise


def scan_all(
    client: Any, table: str, *, page_size: int | None = None, consistent: bool = True
) -> list[dict[str, Any]]:
    """Every item of ``table`` in low-level JSON (``{"PK": {"S": ...}, ...}``), paginated."""
    items: list[dict[str, Any]] = []
    kwargs: dict[str, Any] = {"TableName": table, "ConsistentRead": consistent}
    if page_size is not None:
        kwargs["Limit"] = page_size
    while True:
        page = client.scan(**kwargs)
        items.extend(page.get("Items", []))
        last = page.get("LastEvaluatedKey")
        if not last:
            return items
        kwargs["ExclusiveStartKey"] = last


def item_key(item: dict[str, Any]) -> tuple[str, str]:
    """``(PK, SK)`` of a low-level item."""
    return item["PK"]["S"], item["SK"]["S"]


def canonical_value(value: dict[str, Any]) -> Any:
    """A low-level attribute value in a form that compares equal across servers.

    ``N`` text becomes ``Decimal`` (real DynamoDB and dynalite trim zeros, moto keeps
    the text verbatim), and ``SS``/``NS``/``BS`` become frozensets (order is not kept).
    Use it only where exact ``N`` text is not what is being tested.
    """
    ((tag, v),) = value.items()
    if tag == "N":
        return ("N", Decimal(v))
    if tag == "NS":
        return ("NS", frozenset(Decimal(x) for x in v))
    if tag in ("SS", "BS"):
        return (tag, frozenset(v))
    if tag == "M":
        return ("M", {k: canonical_value(x) for k, x in v.items()})
    if tag == "L":
        return ("L", [canonical_value(x) for x in v])
    return (tag, v)


def canonical_item(item: dict[str, Any]) -> dict[str, Any]:
    return {k: canonical_value(v) for k, v in item.items()}


def items_by_key(items: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    """Index low-level items by ``(PK, SK)``; duplicate keys are an error."""
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for item in items:
        key = item_key(item)
        if key in out:
            raise ValueError(f"duplicate key {key}")
        out[key] = item
    return out
