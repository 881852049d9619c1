"""The tool makes the JSON body of each BatchWriteItem itself (json.dumps of the request),
because botocore's serializer walks every attribute value in Python first: about a third
of the client's CPU in a copy. That shortcut is only right while the bodies are the very
bytes botocore makes, so this compares the two for every golden item (every entity kind)
and for odd values, and checks that anything not plain JSON, and every other operation,
still goes through botocore's own serializer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config
from items import Item, load_expected
from servers import DUMMY_KEY_ID, DUMMY_SECRET, REGION

import copy_dynamodb_dev_to_prod as tool


@pytest.fixture(scope="module")
def bare_client() -> Any:
    """A client as botocore makes it (the tool's serializer not installed); never sends."""
    return boto3.client("dynamodb", region_name=REGION, endpoint_url="http://127.0.0.1:9",
                        aws_access_key_id=DUMMY_KEY_ID, aws_secret_access_key=DUMMY_SECRET,
                        config=Config(parameter_validation=False))


def both_ways(client: Any, operation: str, params: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    model = client.meta.service_model.operation_model(operation)
    botocore_made = client._serializer.serialize_to_request(params, model)
    tool_made = tool.PlainJsonBodies(client._serializer).serialize_to_request(params, model)
    return tool_made, botocore_made


def batch_write(items: list[Item], table: str = "prod-receipts") -> dict[str, Any]:
    return {"RequestItems": {table: [{"PutRequest": {"Item": i}} for i in items]},
            "ReturnConsumedCapacity": "TOTAL"}


def test_every_golden_item_gives_botocores_bytes(bare_client: Any) -> None:
    items = list(load_expected().values())
    kinds = {i["TYPE"]["S"] for i in items}
    assert len(kinds) >= 10, kinds  # every entity kind the golden set has
    for start in range(0, len(items), 25):
        ours, theirs = both_ways(bare_client, "BatchWriteItem", batch_write(items[start:start + 25]))
        assert ours == theirs


@pytest.mark.parametrize("value", [
    {"S": "snowman ☃, emoji 🧾, quote \", backslash \\, control \u0001"},
    {"N": "-1.000000000000000000000000000000000000E-130"},
    {"NULL": True},
    {"BOOL": False},
    {"L": [{"M": {"": {"SS": ["a", "b"]}, "n": {"NS": ["1", "2.5"]}}}, {"L": []}]},
])
def test_odd_values_give_botocores_bytes(bare_client: Any, value: dict[str, Any]) -> None:
    item = {"PK": {"S": "IMAGE#x"}, "SK": {"S": "ODD"}, "v": value}
    ours, theirs = both_ways(bare_client, "BatchWriteItem", batch_write([item]))
    assert ours == theirs


def test_bytes_go_through_botocore(bare_client: Any) -> None:
    """A B value is base64 in the body: only botocore's walk does that."""
    item = {"PK": {"S": "IMAGE#x"}, "SK": {"S": "BIN"}, "b": {"B": b"\x00\xff"}, "bs": {"BS": [b"a"]}}
    ours, theirs = both_ways(bare_client, "BatchWriteItem", batch_write([item]))
    assert ours == theirs and b'"AP8="' in ours["body"]


def test_other_operations_go_through_botocore(bare_client: Any) -> None:
    model = bare_client.meta.service_model.operation_model("BatchGetItem")

    class Recording:
        def __init__(self) -> None:
            self.seen: list[Any] = []

        def serialize_to_request(self, params: Any, operation_model: Any) -> dict[str, Any]:
            self.seen.append(params)
            return {"body": b"botocore"}

    inner = Recording()
    params = {"RequestItems": {"t": {"Keys": [{"PK": {"S": "a"}, "SK": {"S": "b"}}]}}}
    assert tool.PlainJsonBodies(inner).serialize_to_request(params, model) == {"body": b"botocore"}
    assert inner.seen == [params]


def test_the_tools_client_uses_it(tmp_path: Path) -> None:
    cfg = tool.Config(export_dir=tmp_path, endpoint_url="http://127.0.0.1:9", region="us-east-1")
    client = tool.make_client(cfg)
    assert isinstance(client._serializer, tool.PlainJsonBodies)
