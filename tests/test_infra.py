"""Tests of the test infrastructure itself: engines, tables, the environment, the fault proxy."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zlib
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from botocore.exceptions import ClientError, ConnectionClosedError, EndpointConnectionError
from conftest import TableHandle
from fault_proxy import (
    ALL_FAULTS,
    BAD_CRC,
    DEFAULT_FAULTS,
    DROP_AFTER,
    ERROR_AFTER,
    ERROR_BEFORE,
    PARTIAL_BATCH,
    PARTIAL_BATCH_GET,
    PROVISIONED_THROUGHPUT,
    THROTTLING,
    FaultProxy,
)
from items import by_key, canonical_item, item_key, load_expected, scan_all
from servers import (
    GSI_NAMES,
    KEY_ATTRIBUTES,
    DDBLocalServer,
    env_for_subprocess,
    make_client,
)

ProxyFactory = Callable[..., FaultProxy]


# --------------------------------------------------------------------------- helpers


def make_items(n: int, prefix: str = "IMAGE#t") -> list[dict[str, Any]]:
    """``n`` low-level items with all GSI keys, numbers and nested values."""
    items = []
    for i in range(n):
        pk = f"{prefix}{i // 7:03d}"
        items.append(
            {
                "PK": {"S": pk},
                "SK": {"S": f"LINE#{i:05d}"},
                "TYPE": {"S": "LINE"},
                "GSI1PK": {"S": f"G1#{i % 3}"},
                "GSI1SK": {"S": f"{i:05d}"},
                "GSI2PK": {"S": "G2"},
                "GSI2SK": {"S": f"{i:05d}"},
                "GSI3PK": {"S": "G3"},
                "GSI3SK": {"S": f"{i:05d}"},
                "GSI4PK": {"S": pk},
                "GSI4SK": {"S": f"{i:05d}"},
                "confidence": {"N": "0.99"},
                "n": {"N": str(i)},
                "text": {"S": f"word {i} ü"},
                "bounding_box": {"M": {"x": {"N": "0.5"}, "y": {"N": "0.25"}}},
                "tags": {"L": [{"S": "a"}, {"NULL": True}]},
            }
        )
    return items


def batch_write_all(client: Any, table: str, items: list[dict[str, Any]], *, batch_size: int = 25) -> int:
    """Write with BatchWriteItem, re-sending UnprocessedItems; returns re-sent count."""
    resent = 0
    for start in range(0, len(items), batch_size):
        request: dict[str, list[Any]] = {
            table: [{"PutRequest": {"Item": it}} for it in items[start : start + batch_size]]
        }
        for _ in range(100):
            resp = client.batch_write_item(RequestItems=request)
            request = resp.get("UnprocessedItems") or {}
            if not request:
                break
            resent += sum(len(v) for v in request.values())
        else:
            raise AssertionError("UnprocessedItems never drained")
    return resent


def batch_get_all(client: Any, table: str, keys: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for start in range(0, len(keys), 100):
        request: dict[str, Any] = {table: {"Keys": keys[start : start + 100], "ConsistentRead": True}}
        for _ in range(100):
            resp = client.batch_get_item(RequestItems=request)
            out.extend(resp["Responses"].get(table, []))
            request = resp.get("UnprocessedKeys") or {}
            if not request:
                break
        else:
            raise AssertionError("UnprocessedKeys never drained")
    return out


def key_of(item: dict[str, Any]) -> dict[str, Any]:
    return {"PK": item["PK"], "SK": item["SK"]}


def assert_table_holds_exactly(client: Any, table: str, expected: list[dict[str, Any]]) -> None:
    """Numbers compared as decimals: DynamoDB Local trims N text, moto keeps it."""
    actual = by_key(scan_all(client, table))
    wanted = by_key(expected)
    assert sorted(actual) == sorted(wanted)
    for key, item in wanted.items():
        assert canonical_item(actual[key]) == canonical_item(item), key


class CrcRecorder:
    """Records, per attempt, whether the answer's x-amz-crc32 matched its body."""

    def __init__(self, client: Any) -> None:
        self.checked: list[tuple[int, bool]] = []  # (status, crc ok)
        self.missing = 0
        client.meta.events.register("needs-retry.dynamodb", self._on_response)

    def _on_response(self, response: Any = None, **_: Any) -> None:
        if response is None:  # connection-level error: nothing to check
            return
        http_response = response[0]
        header = http_response.headers.get("x-amz-crc32")
        if header is None:
            self.missing += 1
            return
        ok = int(header) == zlib.crc32(http_response.content) & 0xFFFFFFFF
        self.checked.append((http_response.status_code, ok))


# --------------------------------------------------------------------------- servers & tables


def test_table_layout(ddb_table: TableHandle) -> None:
    table = ddb_table.client.describe_table(TableName=ddb_table.name)["Table"]
    assert table["TableStatus"] == "ACTIVE"
    assert "dev" not in ddb_table.name
    assert table["KeySchema"] == [
        {"AttributeName": "PK", "KeyType": "HASH"},
        {"AttributeName": "SK", "KeyType": "RANGE"},
    ]
    assert sorted((a["AttributeName"], a["AttributeType"]) for a in table["AttributeDefinitions"]) == sorted(
        (a, "S") for a in KEY_ATTRIBUTES
    )
    gsis = {g["IndexName"]: g for g in table["GlobalSecondaryIndexes"]}
    assert sorted(gsis) == sorted([*GSI_NAMES, "GSITYPE"])
    for name in GSI_NAMES:
        assert gsis[name]["KeySchema"] == [
            {"AttributeName": f"{name}PK", "KeyType": "HASH"},
            {"AttributeName": f"{name}SK", "KeyType": "RANGE"},
        ]
    assert gsis["GSITYPE"]["KeySchema"] == [{"AttributeName": "TYPE", "KeyType": "HASH"}]
    for g in gsis.values():
        assert g["Projection"]["ProjectionType"] == "ALL"
        assert g.get("IndexStatus", "ACTIVE") == "ACTIVE"
    assert table["BillingModeSummary"]["BillingMode"] == "PAY_PER_REQUEST"
    assert table["StreamSpecification"] == {"StreamEnabled": True, "StreamViewType": "NEW_AND_OLD_IMAGES"}


def test_write_scan_query_roundtrip(ddb_table: TableHandle) -> None:
    client, name = ddb_table.client, ddb_table.name
    items = make_items(40)
    assert batch_write_all(client, name, items) == 0
    # paginated scan returns everything exactly once
    assert len(scan_all(client, name, page_size=7)) == 40
    assert_table_holds_exactly(client, name, items)
    # every GSI is populated
    resp = client.query(
        TableName=name,
        IndexName="GSITYPE",
        KeyConditionExpression="#t = :t",
        ExpressionAttributeNames={"#t": "TYPE"},
        ExpressionAttributeValues={":t": {"S": "LINE"}},
    )
    assert resp["Count"] == 40
    for gsi in GSI_NAMES[1:3]:
        resp = client.query(
            TableName=name,
            IndexName=gsi,
            KeyConditionExpression="#p = :p",
            ExpressionAttributeNames={"#p": f"{gsi}PK"},
            ExpressionAttributeValues={":p": {"S": gsi.replace("SI", "")}},
        )
        assert resp["Count"] == 40, gsi


def test_golden_items_roundtrip(ddb_table: TableHandle) -> None:
    """All golden prod items can be stored on both engines and read back."""
    expected = list(load_expected().values())
    assert len(expected) == 756
    batch_write_all(ddb_table.client, ddb_table.name, expected)
    assert_table_holds_exactly(ddb_table.client, ddb_table.name, expected)


def test_table_names_are_unique(ddblocal_server: DDBLocalServer,
                                table_factory: Callable[..., TableHandle]) -> None:
    a, b = table_factory(ddblocal_server), table_factory(ddblocal_server)
    assert a.name != b.name
    assert a.name.startswith("receipts-test-") and "dev" not in a.name
    assert set(a.client.list_tables()["TableNames"]) >= {a.name, b.name}


def test_env_for_subprocess(ddblocal_table: TableHandle) -> None:
    base = {
        **os.environ,
        "AWS_PROFILE": "prod-admin",
        "AWS_SESSION_TOKEN": "real-looking-token",
        "AWS_ACCESS_KEY_ID": "AKIAREALKEY",
        "AWS_ENDPOINT_URL": "https://example.invalid",
    }
    env = env_for_subprocess(ddblocal_table.url, base=base)
    assert "AWS_PROFILE" not in env and "AWS_SESSION_TOKEN" not in env
    assert "AWS_ENDPOINT_URL" not in env
    assert env["AWS_ACCESS_KEY_ID"] == "testing"
    assert env["AWS_DEFAULT_REGION"] == "us-east-1"
    assert env["AWS_ENDPOINT_URL_DYNAMODB"] == ddblocal_table.url
    script = (
        "import boto3, json; c = boto3.client('dynamodb'); print(json.dumps(c.list_tables()['TableNames']))"
    )
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert ddblocal_table.name in json.loads(out.stdout)


def test_conftest_scrubs_aws_environment() -> None:
    assert "AWS_PROFILE" not in os.environ
    assert os.environ["AWS_ACCESS_KEY_ID"] == "testing"


# --------------------------------------------------------------------------- fault proxy


def test_proxy_passthrough_is_transparent(
    ddblocal_table: TableHandle, fault_proxy_factory: ProxyFactory
) -> None:
    proxy = fault_proxy_factory(ddblocal_table.url, rate=0.0)
    client = make_client(proxy.url)
    crc = CrcRecorder(client)
    items = make_items(30)
    batch_write_all(client, ddblocal_table.name, items)
    got = client.get_item(TableName=ddblocal_table.name, Key=key_of(items[3]), ConsistentRead=True)
    assert got["Item"] == items[3]
    assert got["ResponseMetadata"]["RetryAttempts"] == 0
    assert_table_holds_exactly(ddblocal_table.client, ddblocal_table.name, items)
    assert proxy.injected == {}
    assert proxy.calls == {"BatchWriteItem": 2, "GetItem": 1}
    assert proxy.forwarded == proxy.calls
    assert crc.checked and all(ok for _, ok in crc.checked) and crc.missing == 0


@pytest.mark.parametrize("fault", [*DEFAULT_FAULTS, PARTIAL_BATCH_GET], ids=lambda f: str(f))
def test_each_fault_is_injected_and_recovered(
    fault: str, ddblocal_table: TableHandle, fault_proxy_factory: ProxyFactory, fast_retries: float
) -> None:
    proxy = fault_proxy_factory(ddblocal_table.url, seed=1234, rate=0.4, faults=(fault,))
    client = make_client(proxy.url, max_attempts=10)
    crc = CrcRecorder(client)
    table = ddblocal_table.name
    items = make_items(120)
    batch_write_all(client, table, items[:100], batch_size=10)
    for item in items[100:]:
        client.put_item(TableName=table, Item=item)
    # reads through the proxy see exactly what was written
    for item in items[:5]:
        got = client.get_item(TableName=table, Key=key_of(item), ConsistentRead=True)
        assert got["Item"] == item
    got_batch = batch_get_all(client, table, [key_of(it) for it in items])
    assert by_key(got_batch) == by_key(items)
    resp = client.query(
        TableName=table,
        KeyConditionExpression="PK = :p",
        ExpressionAttributeValues={":p": items[0]["PK"]},
        ConsistentRead=True,
    )
    assert [item_key(i) for i in resp["Items"]] == [item_key(i) for i in items[:7]]

    assert proxy.injected.get(fault, 0) > 0, proxy.injected
    assert set(proxy.injected) == {fault}
    assert_table_holds_exactly(ddblocal_table.client, table, items)
    assert crc.checked and all(ok for _, ok in crc.checked), crc.checked


def test_mixed_faults_concurrent_clients(
    ddb_table: TableHandle, table_factory: Callable[..., TableHandle], fault_proxy_factory: ProxyFactory,
    fast_retries: float,
) -> None:
    """All default faults at 30% with 4 threads, on both engines; the table ends exact. Each
    request's fault is decided from the request itself, so the same writes done again by one
    thread into another table meet exactly the same faults."""
    items = make_items(400)
    chunks = [items[i : i + 50] for i in range(0, len(items), 50)]

    def write(table: TableHandle, workers: int) -> Counter[tuple[str, str]]:
        proxy = fault_proxy_factory(table.url, seed=7, rate=0.3)
        client = make_client(proxy.url, max_attempts=10)
        with ThreadPoolExecutor(max_workers=workers) as pool:
            resent = list(pool.map(lambda c: batch_write_all(client, table.name, c), chunks))
        assert sum(resent) > 0
        assert set(proxy.injected) == set(DEFAULT_FAULTS), proxy.injected
        assert_table_holds_exactly(table.client, table.name, items)
        return Counter(proxy.events)

    concurrent = write(ddb_table, 4)
    assert write(table_factory(ddb_table.server), 1) == concurrent


def test_error_before_does_not_write(ddblocal_table: TableHandle, fault_proxy_factory: ProxyFactory) -> None:
    proxy = fault_proxy_factory(ddblocal_table.url, rate=1.0, faults=(ERROR_BEFORE,))
    client = make_client(proxy.url, total_max_attempts=1)
    item = make_items(1)[0]
    with pytest.raises(ClientError) as err:
        client.put_item(TableName=ddblocal_table.name, Item=item)
    assert err.value.response["Error"]["Code"] == "InternalServerError"
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 500
    assert scan_all(ddblocal_table.client, ddblocal_table.name) == []
    assert proxy.forwarded == {}


@pytest.mark.parametrize("fault", [ERROR_AFTER, DROP_AFTER])
def test_after_faults_write_but_fail(
    fault: str, ddblocal_table: TableHandle, fault_proxy_factory: ProxyFactory
) -> None:
    proxy = fault_proxy_factory(ddblocal_table.url, rate=1.0, faults=(fault,))
    client = make_client(proxy.url, total_max_attempts=1)
    item = make_items(1)[0]
    expected_exc = ClientError if fault == ERROR_AFTER else ConnectionClosedError
    with pytest.raises(expected_exc):
        client.put_item(TableName=ddblocal_table.name, Item=item)
    assert scan_all(ddblocal_table.client, ddblocal_table.name) == [item]
    assert proxy.injected == {fault: 1}
    assert proxy.forwarded == {"PutItem": 1}


def test_partial_batch_splits_and_reports_unprocessed(
    ddblocal_table: TableHandle, fault_proxy_factory: ProxyFactory
) -> None:
    proxy = fault_proxy_factory(ddblocal_table.url, seed=3, rate=1.0, faults=(PARTIAL_BATCH,))
    client = make_client(proxy.url, total_max_attempts=1)
    crc = CrcRecorder(client)
    items = make_items(20)
    resp = client.batch_write_item(
        RequestItems={ddblocal_table.name: [{"PutRequest": {"Item": it}} for it in items]}
    )
    # botocore accepted the rewritten body's crc32 on the first attempt
    assert resp["ResponseMetadata"]["RetryAttempts"] == 0
    assert crc.checked == [(200, True)]
    held = [r["PutRequest"]["Item"] for r in resp["UnprocessedItems"][ddblocal_table.name]]
    written = scan_all(ddblocal_table.client, ddblocal_table.name)
    assert 0 < len(held) < len(items) and 0 < len(written)
    assert by_key(written + held) == by_key(items)
    # a single-request batch cannot be split: nothing is injected for it
    proxy.reset_counters()
    resp = client.batch_write_item(RequestItems={ddblocal_table.name: [{"PutRequest": {"Item": held[0]}}]})
    assert not resp.get("UnprocessedItems")
    assert proxy.injected == {}


def test_partial_batch_keeps_per_table_grouping(
    ddblocal_server: DDBLocalServer,
    table_factory: Callable[..., TableHandle],
    fault_proxy_factory: ProxyFactory,
) -> None:
    t1, t2 = table_factory(ddblocal_server), table_factory(ddblocal_server)
    proxy = fault_proxy_factory(ddblocal_server.url, seed=5, rate=1.0, faults=(PARTIAL_BATCH,))
    client = make_client(proxy.url, total_max_attempts=1)
    a, b = make_items(8, prefix="A#"), make_items(8, prefix="B#")
    resp = client.batch_write_item(
        RequestItems={
            t1.name: [{"PutRequest": {"Item": it}} for it in a],
            t2.name: [{"PutRequest": {"Item": it}} for it in b],
        }
    )
    unprocessed = resp["UnprocessedItems"]
    for table, items in ((t1, a), (t2, b)):
        held = [r["PutRequest"]["Item"] for r in unprocessed.get(table.name, [])]
        written = scan_all(table.client, table.name)
        assert by_key(written + held) == by_key(items)


@pytest.mark.parametrize(
    ("fault", "code"),
    [
        (THROTTLING, "ThrottlingException"),
        (PROVISIONED_THROUGHPUT, "ProvisionedThroughputExceededException"),
        (ERROR_BEFORE, "InternalServerError"),
    ],
)
def test_rate_one_exhausts_retries(
    fault: str, code: str, ddblocal_table: TableHandle, fault_proxy_factory: ProxyFactory, fast_retries: float
) -> None:
    proxy = fault_proxy_factory(ddblocal_table.url, rate=1.0, faults=(fault,))
    client = make_client(proxy.url, max_attempts=2)  # botocore: 2 retries, 3 requests
    crc = CrcRecorder(client)
    items = make_items(3)
    with pytest.raises(ClientError) as err:
        client.batch_write_item(
            RequestItems={ddblocal_table.name: [{"PutRequest": {"Item": it}} for it in items]}
        )
    assert err.value.response["Error"]["Code"] == code
    assert err.value.response["ResponseMetadata"]["RetryAttempts"] == 2
    assert proxy.injected == {fault: 3}
    # the proxy's own error answers carry a valid crc32 too
    assert [ok for _, ok in crc.checked] == [True, True, True]
    assert scan_all(ddblocal_table.client, ddblocal_table.name) == []


def test_targets_limit_which_operations_fail(
    ddblocal_table: TableHandle, fault_proxy_factory: ProxyFactory
) -> None:
    proxy = fault_proxy_factory(ddblocal_table.url, rate=1.0, faults=(THROTTLING,), targets=("GetItem",))
    client = make_client(proxy.url, total_max_attempts=1)
    item = make_items(1)[0]
    client.put_item(TableName=ddblocal_table.name, Item=item)  # not targeted
    with pytest.raises(ClientError):
        client.get_item(TableName=ddblocal_table.name, Key=key_of(item))
    proxy.disable()
    assert client.get_item(TableName=ddblocal_table.name, Key=key_of(item))["Item"] == item
    assert proxy.injected == {THROTTLING: 1}


def test_max_faults_caps_injection(
    ddblocal_table: TableHandle, fault_proxy_factory: ProxyFactory, fast_retries: float
) -> None:
    proxy = fault_proxy_factory(ddblocal_table.url, rate=1.0, faults=(THROTTLING,), max_faults=3)
    client = make_client(proxy.url, max_attempts=10)
    item = make_items(1)[0]
    resp = client.put_item(TableName=ddblocal_table.name, Item=item)
    assert resp["ResponseMetadata"]["RetryAttempts"] == 3
    assert proxy.total_injected() == 3


def test_bad_crc_is_detected_by_botocore(ddblocal_table: TableHandle,
                                         fault_proxy_factory: ProxyFactory) -> None:
    """Negative control: botocore really checks x-amz-crc32 (and retries on mismatch),
    so the RetryAttempts == 0 seen for rewritten bodies above means their crc is right."""
    item = make_items(1)[0]
    ddblocal_table.client.put_item(TableName=ddblocal_table.name, Item=item)
    proxy = fault_proxy_factory(ddblocal_table.url, rate=1.0, faults=(BAD_CRC,))
    client = make_client(proxy.url, total_max_attempts=3)
    crc = CrcRecorder(client)
    resp = client.get_item(TableName=ddblocal_table.name, Key=key_of(item))
    assert resp["ResponseMetadata"]["RetryAttempts"] == 2
    assert [ok for _, ok in crc.checked] == [False, False, False]
    assert proxy.injected == {BAD_CRC: 3}


def test_proxy_rejects_bad_config(ddblocal_server: DDBLocalServer) -> None:
    with pytest.raises(ValueError):
        FaultProxy(ddblocal_server.url, faults=("nope",))
    with pytest.raises(ValueError):
        FaultProxy(ddblocal_server.url, rate=1.5)
    with pytest.raises(ValueError):
        FaultProxy("https://dynamodb.us-east-1.amazonaws.com")
    assert set(DEFAULT_FAULTS) < set(ALL_FAULTS)


def test_stopped_proxy_cuts_kept_alive_connections(
    ddblocal_table: TableHandle, fault_proxy_factory: ProxyFactory
) -> None:
    proxy = fault_proxy_factory(ddblocal_table.url, rate=0.0)
    client = make_client(proxy.url, total_max_attempts=1)
    client.list_tables()  # opens a pooled keep-alive connection
    proxy.stop()
    with pytest.raises((EndpointConnectionError, ConnectionClosedError)):
        client.list_tables()
