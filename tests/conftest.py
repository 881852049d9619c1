"""Shared pytest fixtures: one per engine, fresh tables on each, fault proxies.

* ``ddblocal_server`` / ``ddblocal_table``: DynamoDB Local, the reference engine of every
  end-to-end test (one session-wide handle; tables are never deleted on it, and a crowded
  process is replaced by a fresh one between tests);
* ``moto_server`` / ``fresh_table``: moto, where the receipt system's CI runs the tool, and
  for Step Functions;
* ``ddb_table``: a table on each engine (parametrized), for tests of the harness itself;
* ``sfn_url`` / ``wave_setup``: Step Functions that really run workflows, and the waves harness
  (``waves.py``) on a fresh moto table.

The helpers are plain modules (``tests/`` is on ``sys.path``), and test modules import only
from them, never from each other: ``servers`` (engines, clients, moto's Step Functions
machines, the CLI's environment), ``cli`` (running the tool: as a subprocess, through a fault
proxy, on a terminal, or its configuration for in-process tests), ``items`` (golden and table
items, the ``Item``/``Key`` types, comparison), ``exports`` (building export dirs),
``fault_proxy``, ``waiting`` (``wait_for``: every poll, with a deadline), ``waves`` (workflows
that run, the embedding pipeline's stand-in, runs with --wave-size).
"""

from __future__ import annotations

import itertools
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from botocore.retries.standard import ExponentialBackoff

TESTS_DIR = Path(__file__).resolve().parent
REPO_ROOT = TESTS_DIR.parent
for _p in (str(TESTS_DIR), str(REPO_ROOT)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

from fault_proxy import FaultProxy  # noqa: E402
from servers import (  # noqa: E402
    DDBLocalServer,
    LocalServer,
    MotoServer,
    create_table,
    ddblocal_unavailable_reason,
    delete_table,
    env_for_subprocess,
    make_client,
    start_ddblocal,
    start_moto_server,
)

if TYPE_CHECKING:
    from waves import Setup

_table_numbers = itertools.count(1)


@dataclass
class TableHandle:
    """A freshly created receipts table on a local server."""

    name: str
    url: str
    client: Any  # boto3 DynamoDB client talking to ``url`` directly
    server: LocalServer


# --------------------------------------------------------------------------- environment


@pytest.fixture(scope="session", autouse=True)
def _dummy_aws_environment() -> Iterator[None]:
    """No real AWS configuration may leak into tests: scrub AWS_*, set dummies."""
    with pytest.MonkeyPatch.context() as mp:
        for key in list(os.environ):
            if key.upper().startswith(("AWS_", "BOTO")):
                mp.delenv(key)
        for key, value in env_for_subprocess().items():
            if key.startswith("AWS_"):
                mp.setenv(key, value)
        yield


@pytest.fixture
def fast_retries(monkeypatch: pytest.MonkeyPatch) -> float:
    """Scale botocore's standard-mode retry backoff by 1/100 in this process.

    botocore sleeps ``rand() * min(scale * 2**i, 20)`` s before retry ``i`` with
    scale 1 s for throttling errors and 25 ms for other DynamoDB errors, so tests
    that inject many throttles get slow. Only affects in-process clients (not
    subprocesses) in "standard" mode. Returns the factor.
    """
    factor = 0.01
    original = ExponentialBackoff.delay_amount

    def delay_amount(self: ExponentialBackoff, context: Any) -> float:
        return float(original(self, context)) * factor

    monkeypatch.setattr(ExponentialBackoff, "delay_amount", delay_amount)
    return factor


# --------------------------------------------------------------------------- servers


@pytest.fixture(scope="session")
def moto_server() -> Iterator[MotoServer]:
    server = start_moto_server()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def ddblocal_server() -> Iterator[DDBLocalServer]:
    """AWS's DynamoDB Local, the reference engine: one handle for the session, whose process
    _ddblocal_not_crowded renews between tests."""
    reason = ddblocal_unavailable_reason()
    if reason:
        if os.environ.get("REQUIRE_DDBLOCAL"):  # CI sets it: a missing install must not pass
            pytest.fail(f"REQUIRE_DDBLOCAL is set but {reason}")
        pytest.skip(reason)
    server = start_ddblocal()
    yield server
    server.stop()


# DynamoDB Local slows down as tables pile up in one process (a golden copy took 5 s on a
# fresh process and 46 s on one holding 100 tables), so a test starts on a fresh process
# once this many tables exist. Between tests only: a test's own tables stay where they are.
DDBLOCAL_TABLES_PER_PROCESS = 8


@pytest.fixture(autouse=True)
def _ddblocal_not_crowded(request: pytest.FixtureRequest) -> None:
    if "ddblocal_server" in request.fixturenames:
        server: DDBLocalServer = request.getfixturevalue("ddblocal_server")
        if server.table_count() >= DDBLOCAL_TABLES_PER_PROCESS:
            server.restart()


@pytest.fixture(params=["moto", "ddblocal"])
def ddb_server(request: pytest.FixtureRequest) -> LocalServer:
    """Each test using it runs once against moto and once against DynamoDB Local."""
    server: LocalServer = request.getfixturevalue(f"{request.param}_server")
    return server


# --------------------------------------------------------------------------- tables


def new_table_name(prefix: str = "receipts-test") -> str:
    """A table name unique within this test process (never contains "dev")."""
    name = f"{prefix}-{os.getpid()}-{next(_table_numbers)}"
    assert "dev" not in name.lower(), name
    return name


@pytest.fixture
def table_name() -> str:
    """A unique table name (the table is not created)."""
    return new_table_name()


@pytest.fixture
def table_factory() -> Iterator[Callable[[LocalServer], TableHandle]]:
    """``make(server) -> TableHandle``: create fresh tables; deleted after the test."""
    created: list[TableHandle] = []

    def make(server: LocalServer) -> TableHandle:
        client = make_client(server.url)
        name = new_table_name()
        create_table(client, name)
        handle = TableHandle(name=name, url=server.url, client=client, server=server)
        created.append(handle)
        return handle

    yield make
    for handle in created:
        if handle.server.name == "ddblocal":
            continue  # DeleteTable makes DynamoDB Local ~80x slower; its memory goes with it
        try:
            delete_table(handle.client, handle.name)
        except Exception:
            pass


@pytest.fixture
def fresh_table(moto_server: MotoServer, table_factory: Callable[[LocalServer], TableHandle]) -> TableHandle:
    """A new, empty receipts table on the session's moto server (the CI smoke test's engine)."""
    return table_factory(moto_server)


@pytest.fixture
def ddblocal_table(
    ddblocal_server: DDBLocalServer, table_factory: Callable[[LocalServer], TableHandle]
) -> TableHandle:
    """A new, empty receipts table on the session's DynamoDB Local."""
    return table_factory(ddblocal_server)


@pytest.fixture
def ddb_table(ddb_server: LocalServer, table_factory: Callable[[LocalServer], TableHandle]) -> TableHandle:
    """A new, empty receipts table on moto and on DynamoDB Local (parametrized)."""
    return table_factory(ddb_server)


@pytest.fixture(scope="module")
def sfn_url() -> Iterator[str]:
    """A moto server of the test module's own (a subprocess) with Step Functions executing
    (``waves.executing_sfn_server``): the workflows of the waves tests really run."""
    from waves import executing_sfn_server  # not at the top: waves imports this module

    with executing_sfn_server() as url:
        yield url


@pytest.fixture
def wave_setup(fresh_table: TableHandle, sfn_url: str) -> Iterator[Setup]:
    """A fresh moto table, two fresh callback workflows and the pipeline's stand-in
    (``waves.Setup``), closed after the test."""
    from waves import Setup

    setup = Setup(fresh_table, sfn_url)
    try:
        yield setup
    finally:
        setup.close()


# --------------------------------------------------------------------------- proxies


@pytest.fixture
def fault_proxy_factory() -> Iterator[Callable[..., FaultProxy]]:
    """``make(upstream_url, **FaultProxy kwargs) -> FaultProxy``; stopped after the test."""
    proxies: list[FaultProxy] = []

    def make(upstream_url: str, **kwargs: Any) -> FaultProxy:
        proxy = FaultProxy(upstream_url, **kwargs)
        proxies.append(proxy)
        return proxy

    yield make
    for proxy in proxies:
        proxy.stop()
