"""Local DynamoDB engines, clients, the receipts table, and the environment for the CLI.

* DynamoDB Local (AWS's own engine, Java; installed by ``tests/install_ddblocal.sh`` into
  ``<repo>/.ddblocal`` or ``$DDBLOCAL_DIR``): the reference engine of the end-to-end tests
  (AWS's validation, streams, consumed capacity);
* moto, in-process (``moto.server.ThreadedMotoServer``): where the receipt system's CI runs
  the tool, and the only local Step Functions.

:func:`env_for_subprocess` is the one environment builder for running the CLI. Everything
here talks to ``127.0.0.1`` only and uses dummy credentials (``testing``/``testing``, region
``us-east-1``); it never reads real AWS credentials or profiles.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol, cast

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError
from waiting import wait_for

REGION = "us-east-1"
DUMMY_KEY_ID = "testing"
DUMMY_SECRET = "testing"

REPO_ROOT = Path(__file__).resolve().parent.parent

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
    """What every engine handle offers."""

    name: str
    url: str

    def stop(self) -> None: ...


# --------------------------------------------------------------------------- utilities


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (racy by nature)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def answers_http(url: str, timeout: float = 2.0) -> bool:
    """Whether something answers HTTP at ``url`` now (any status code counts)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout):
            return True
    except urllib.error.HTTPError:
        return True  # it answered, that is all we need
    except OSError:  # connection refused, reset, timeout ...
        return False


def wait_http(url: str, timeout: float = 20.0) -> None:
    """Wait until something answers HTTP at ``url`` (any status code counts)."""
    wait_for(lambda: answers_http(url), timeout=timeout, what=f"something to answer HTTP at {url}")


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


# --------------------------------------------------------------------------- processes


def wait_started(proc: subprocess.Popen[bytes], url: str, timeout: float) -> None:
    """Wait until the server process ``proc`` answers HTTP at ``url``; fail at once if it exits."""

    def exited() -> str | None:
        return None if proc.poll() is None else f"the server exited with code {proc.returncode}"

    wait_for(lambda: answers_http(url, timeout=0.5), timeout=timeout,
             what=f"the server to answer at {url}", give_up=exited)


def die_with_parent() -> None:
    """preexec_fn for server processes: on Linux the kernel kills the server when the test
    process dies, even by SIGKILL or a CI timeout, so no engine outlives its tests."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: atexit still stops servers on a clean exit
        pass


def _terminate(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


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


def ddblocal_command(port: int) -> list[str]:
    """The command line of DynamoDB Local in memory on ``port`` (run it in :func:`ddblocal_dir`).
    It has no option to choose the interface: clients reach it at ``127.0.0.1``."""
    java = shutil.which("java")
    assert java is not None, "java is not on PATH"
    home = ddblocal_dir()
    return [java, "-Xss4m", f"-Djava.library.path={home / 'DynamoDBLocal_lib'}",
            "-jar", str(home / "DynamoDBLocal.jar"),
            "-inMemory", "-sharedDb", "-disableTelemetry", "-port", str(port)]


class DDBLocalServer:
    """AWS's DynamoDB Local (in memory, no telemetry) on 127.0.0.1.

    Tables are never deleted on it: after a DeleteTable it gets ~80x slower, so a test
    that needs a clean engine starts a fresh process instead. ``-sharedDb``: one database
    whatever the credentials (by default each access key id sees its own tables, and the
    tests run the CLI with several fake keys)."""

    name = "ddblocal"

    def __init__(self, *, startup_timeout: float = 60.0, attempts: int = 3) -> None:
        reason = ddblocal_unavailable_reason()
        if reason:
            raise RuntimeError(reason)
        self.startup_timeout, self.attempts = startup_timeout, attempts
        self._proc: subprocess.Popen[bytes] | None = None
        self.start()
        atexit.register(self.stop)

    def start(self) -> None:
        home = ddblocal_dir()
        self._log = tempfile.NamedTemporaryFile(prefix="ddblocal-", suffix=".log", delete=False)
        self.log_path = Path(self._log.name)
        last_error = ""
        for _ in range(self.attempts):  # the free port may be taken by the time java binds it
            port = free_port()
            proc = subprocess.Popen(
                ddblocal_command(port),
                cwd=home,
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=die_with_parent,
            )
            url = f"http://127.0.0.1:{port}"
            try:
                wait_started(proc, url, self.startup_timeout)
            except Exception as exc:
                last_error = repr(exc)
                _terminate(proc)
                continue
            self._proc = proc
            self.url = url
            return
        self._log.close()
        log = self.log_path.read_text(errors="replace")[-2000:]
        raise RuntimeError(f"DynamoDB Local did not start: {last_error}\n--- log ---\n{log}")

    def table_count(self) -> int:
        return len(make_client(self.url).list_tables(Limit=100)["TableNames"])

    def restart(self) -> None:
        """A fresh, empty engine on a new port (``url`` changes): DynamoDB Local slows down
        as tables pile up, and deleting them makes it slower still."""
        self.stop()
        self.start()

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
        retries=cast(Any, retries),  # a plain dict; the stubs want their TypedDict
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
        max_pool_connections=max_pool_connections,
    )
    with _session_lock:  # Session.client() is not thread-safe
        return session.client("dynamodb", endpoint_url=url, config=config)


#: The tool's own configuration variables: a developer's shell must not steer the tests.
TOOL_ENV_VARS = (
    "PROD_DYNAMODB_TABLE_NAME",
    "DEV_DYNAMODB_TABLE_NAME",
    "DEV_RAW_BUCKET",
    "PROD_RAW_BUCKET",
    "DEV_CDN_BUCKET",
    "PROD_CDN_BUCKET",
)


def env_for_subprocess(
    url: str | None = None,
    *,
    credentials: bool = True,
    home: Path | None = None,
    extra: Mapping[str, str] | None = None,
    base: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The environment for running the CLI (the one builder every test uses).

    Starts from ``base`` (default ``os.environ``) without any ``AWS_*``/``BOTO*`` variable or
    the tool's own variables; points the AWS config and credentials files at a path that does
    not exist and disables the instance metadata lookup, so nothing of the developer's AWS
    setup is found. ``credentials``: set dummy keys and region ``us-east-1`` (False: no AWS
    configuration at all, as a dry run must work). ``url``: also set
    ``AWS_ENDPOINT_URL_DYNAMODB`` (a safety net; tests still pass ``--endpoint-url``).
    ``home``: HOME (created if missing). ``extra``: set last.
    """
    env = {k: v for k, v in (os.environ if base is None else base).items()
           if not k.upper().startswith(("AWS_", "BOTO")) and k not in TOOL_ENV_VARS}
    nowhere = str(REPO_ROOT / ".no-such-aws-config")
    env.update({"AWS_CONFIG_FILE": nowhere, "AWS_SHARED_CREDENTIALS_FILE": nowhere,
                "AWS_EC2_METADATA_DISABLED": "true", "PYTHONUNBUFFERED": "1", "PYTHONIOENCODING": "utf-8"})
    if credentials:
        env.update({"AWS_ACCESS_KEY_ID": DUMMY_KEY_ID, "AWS_SECRET_ACCESS_KEY": DUMMY_SECRET,
                    "AWS_DEFAULT_REGION": REGION, "AWS_REGION": REGION})
    if url is not None:
        env["AWS_ENDPOINT_URL_DYNAMODB"] = url
    if home is not None:
        home.mkdir(parents=True, exist_ok=True)
        env["HOME"] = str(home)
    env.update(extra or {})
    return env


def make_streams_client(url: str) -> Any:
    """A ``dynamodbstreams`` client for the engine at ``url`` (DynamoDB Local serves both)."""
    session = _session()
    with _session_lock:  # Session.client() is not thread-safe
        return session.client("dynamodbstreams", endpoint_url=url)


def make_service_client(url: str, service: str) -> Any:
    """A client of another service at ``url`` (moto's ``stepfunctions``, ``sqs``), dummy
    credentials."""
    session = _session()
    with _session_lock:  # Session.client() is not thread-safe
        return session.client(cast(Any, service), endpoint_url=url)


# --------------------------------------------------------------------------- Step Functions (moto)

EMBEDDING_ROLE = "arn:aws:iam::123456789012:role/embedding"
PASS_DEFINITION = json.dumps({"StartAt": "Done", "States": {"Done": {"Type": "Pass", "End": True}}})
#: The embedding workflows' names the README's commands use by default.
README_MACHINES = ("embedding-infra-prod-line-workflow", "embedding-infra-prod-word-workflow")


def create_pass_machines(url: str, names: tuple[str, ...] = README_MACHINES) -> tuple[str, ...]:
    """State machines named ``names`` that succeed at once, none of them running. Names are
    global on a moto server shared by the session's tests, and moto keeps every execution
    RUNNING: a machine an earlier test made is kept, its running executions stopped."""
    sfn = make_service_client(url, "stepfunctions")
    existing = {m["name"]: m["stateMachineArn"] for m in sfn.list_state_machines()["stateMachines"]}
    for name in names:
        if name not in existing:
            sfn.create_state_machine(name=name, definition=PASS_DEFINITION, roleArn=EMBEDDING_ROLE)
            continue
        running = sfn.list_executions(stateMachineArn=existing[name], statusFilter="RUNNING")
        for execution in running["executions"]:
            sfn.stop_execution(executionArn=execution["executionArn"])
    return names


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
    last: list[str] = []

    def active() -> dict[str, Any] | None:
        table: dict[str, Any] = client.describe_table(TableName=name)["Table"]
        last[:] = [table["TableStatus"]] + [
            g.get("IndexStatus", "ACTIVE") for g in table.get("GlobalSecondaryIndexes", [])
        ]
        return table if all(s == "ACTIVE" for s in last) else None

    return wait_for(active, timeout=timeout, what=f"table {name} and its indexes to be ACTIVE",
                    details=lambda: f"statuses: {last}")


def delete_table(client: Any, name: str) -> None:
    """Delete ``name``; a missing table is fine."""
    try:
        client.delete_table(TableName=name)
    except ClientError as exc:
        if exc.response["Error"]["Code"] != "ResourceNotFoundException":
            raise
