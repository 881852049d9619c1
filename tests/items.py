"""Items: the golden items the tool must produce, the items a table holds, and comparing them.

One contract everywhere: an item is DynamoDB low-level JSON (``{"PK": {"S": ...}, ...}``) and a
set of items is a ``dict`` keyed by ``(PK, SK)``.

* golden data: :func:`load_expected` (``tests/fixtures/golden/expected``), per image ids;
* a table: :func:`table_items` / :func:`item_count` read it through the DynamoDB API (a
  paginated, consistent Scan), on any engine; :func:`put_items` prepares one;
* comparison: :func:`assert_table_equals` / :func:`assert_items_equal` (numbers compared as
  decimals where the engine trims ``N`` text, as DynamoDB Local and real DynamoDB do);
* invariants: :func:`incomplete_marked_images` (IMAGE-last), :func:`check_write_requests`;
* streams: :func:`stream_records` (DynamoDB Local's streams, at the table's endpoint).

Nothing here reads ``../shared``.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from decimal import Decimal
from functools import cache
from pathlib import Path
from typing import Any

from servers import make_streams_client

TESTS_DIR = Path(__file__).resolve().parent
REPO_ROOT = TESTS_DIR.parent
GOLDEN_DIR = TESTS_DIR / "fixtures" / "golden"
GOLDEN_EXPORT = GOLDEN_DIR / "export"
GOLDEN_EXPECTED = GOLDEN_DIR / "expected"
DEV_EXPORT = REPO_ROOT / "dev.export"

# The golden images (see tests/fixtures/golden/README.md).
IMG_PLACE_EMPTY_ID = "cd613e30-d8f1-4adf-91b7-584a2265b1f5"  # place_id "", 2 receipts
IMG_VERBATIM = "6e9d7077-dca1-484f-82f0-1b582c61cbec"  # Z timestamps, 35-char label
IMG_ROUNDING = "39a01c4f-2da5-4a07-96ae-4caebfc24715"  # 0.985 / 0.125 confidences, 3 receipts
IMG_META_AND_PLACE = "b35feee1-1cd5-4fb2-8a41-a5236695a69c"  # receipt_metadatas + receipt_places
IMG_LEGACY = "efa03cb2-a232-4c58-979f-d56028dab399"  # 2025 key set (metadatas, no places/barcodes)
GOLDEN_IDS: tuple[str, ...] = tuple(sorted(p.stem for p in GOLDEN_EXPORT.glob("*.json")))

# Export list name -> item TYPE, for the 14 kinds.
TYPE_OF_LIST = {
    "images": "IMAGE",
    "lines": "LINE",
    "words": "WORD",
    "letters": "LETTER",
    "receipts": "RECEIPT",
    "receipt_lines": "RECEIPT_LINE",
    "receipt_words": "RECEIPT_WORD",
    "receipt_letters": "RECEIPT_LETTER",
    "receipt_word_labels": "RECEIPT_WORD_LABEL",
    "receipt_places": "RECEIPT_PLACE",
    "receipt_metadatas": "RECEIPT_METADATA",
    "receipt_barcodes": "RECEIPT_BARCODE",
    "ocr_jobs": "OCR_JOB",
    "ocr_routing_decisions": "OCR_ROUTING_DECISION",
}
LIST_OF_TYPE = {t: k for k, t in TYPE_OF_LIST.items()}

Item = dict[str, Any]
Key = tuple[str, str]


# --------------------------------------------------------------------------- keys


def item_key(item: Mapping[str, Any]) -> Key:
    """``(PK, SK)`` of a low-level item."""
    return item["PK"]["S"], item["SK"]["S"]


def by_key(items: Iterable[Item]) -> dict[Key, Item]:
    """Index items by (PK, SK); a duplicate key is an error."""
    out: dict[Key, Item] = {}
    for item in items:
        key = item_key(item)
        assert key not in out, f"duplicate key {key}"
        out[key] = item
    return out


def image_of(key: Key) -> str:
    """The image id of an item key (``IMAGE#<id>``)."""
    return key[0][len("IMAGE#"):]


# --------------------------------------------------------------------------- golden items


@cache
def _expected_lines(image_id: str) -> tuple[str, ...]:
    path = GOLDEN_EXPECTED / f"{image_id}.jsonl"
    return tuple(line for line in path.read_text(encoding="utf-8").splitlines() if line.strip())


def load_expected(ids: Iterable[str] | None = None) -> dict[Key, Item]:
    """The golden expected items of ``ids`` (default: all images), keyed by (PK, SK).
    A fresh copy each call: callers may change it."""
    out: dict[Key, Item] = {}
    for image_id in GOLDEN_IDS if ids is None else ids:
        for key, item in by_key(json.loads(line) for line in _expected_lines(image_id)).items():
            assert key not in out, key
            out[key] = item
    return out


def expected_for_clone(image_id: str, new_id: str) -> dict[Key, Item]:
    """Expected items of a golden image cloned under ``new_id`` (see ``exports.clone_export``)."""
    text = "\n".join(_expected_lines(image_id)).replace(image_id, new_id)
    return by_key(json.loads(line) for line in text.splitlines())


def by_image(items: Mapping[Key, Item]) -> dict[str, dict[Key, Item]]:
    """Items grouped by image id."""
    out: dict[str, dict[Key, Item]] = {}
    for key, item in items.items():
        out.setdefault(image_of(key), {})[key] = item
    return out


def read_jsonl(path: Path) -> list[Item]:
    """The items of a ``--dump-items`` file (one low-level item per line)."""
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def expected_without_types(expected: Mapping[Key, Item], *types: str) -> dict[Key, Item]:
    return {k: v for k, v in expected.items() if v["TYPE"]["S"] not in types}


def count_types(items: Iterable[Item]) -> Counter[str]:
    """How many items of each TYPE."""
    return Counter(item["TYPE"]["S"] for item in items)


def entity_counts(items: Iterable[Item]) -> dict[str, int]:
    """Expected per-export-list counts (as the tool reports them) of these items."""
    return {LIST_OF_TYPE[t]: n for t, n in count_types(items).items()}


# --------------------------------------------------------------------------- tables


def scan_all(client: Any, table: str, *, page_size: int | None = None) -> list[Item]:
    """Every item of ``table`` by a paginated, consistent Scan."""
    items: list[Item] = []
    kwargs: dict[str, Any] = {"TableName": table, "ConsistentRead": True}
    if page_size is not None:
        kwargs["Limit"] = page_size
    while True:
        page = client.scan(**kwargs)
        items.extend(page.get("Items", []))
        if not page.get("LastEvaluatedKey"):
            return items
        kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]


def table_items(client: Any, table: str) -> dict[Key, Item]:
    """Every item of ``table``, keyed by (PK, SK), read through the API."""
    return by_key(scan_all(client, table))


def table_values(client: Any, table: str) -> dict[Key, dict[str, Any]]:
    """Every item of ``table`` with its values made comparable across engines (numbers as
    decimals: DynamoDB Local trims N text; sets unordered): compare with ``canonical_item``."""
    return {k: canonical_item(v) for k, v in table_items(client, table).items()}


def put_items(client: Any, table: str, items: Iterable[Item]) -> None:
    """Write ``items`` with plain BatchWriteItem calls (25 a request, unprocessed ones resent):
    how tests prepare a prod table without the tool."""
    items = list(items)
    for start in range(0, len(items), 25):
        pending: dict[str, Any] = {table: [{"PutRequest": {"Item": i}} for i in items[start:start + 25]]}
        while pending:
            pending = client.batch_write_item(RequestItems=pending).get("UnprocessedItems") or {}


def item_count(client: Any, table: str) -> int:
    """How many items ``table`` holds now (a consistent ``Select=COUNT`` Scan)."""
    total = 0
    kwargs: dict[str, Any] = {"TableName": table, "ConsistentRead": True, "Select": "COUNT"}
    while True:
        page = client.scan(**kwargs)
        total += int(page["Count"])
        if not page.get("LastEvaluatedKey"):
            return total
        kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]


def change_a_receipt_word(client: Any, table: str) -> tuple[Item, Item]:
    """Prod changes one receipt word after a copy (its text); returns (the copied item, the
    changed one)."""
    items = table_items(client, table)
    item = next(v for _, v in sorted(items.items()) if v["TYPE"]["S"] == "RECEIPT_WORD")
    changed = {**item, "text": {"S": item["text"]["S"] + "-changed-in-prod"}}
    client.put_item(TableName=table, Item=changed)
    return item, changed


def images_in_table(client: Any, table: str) -> set[str]:
    """Ids of the images whose IMAGE item is in the table."""
    return {image_of(k) for k in table_items(client, table) if k[1] == "IMAGE"}


# --------------------------------------------------------------------------- comparison


def canonical_value(value: Mapping[str, Any]) -> Any:
    """A low-level attribute value in a form that compares equal across engines: ``N`` text
    becomes ``Decimal`` (DynamoDB Local, like DynamoDB, trims zeros; moto keeps the text), and
    ``SS``/``NS``/``BS`` become frozensets (their order is not kept)."""
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


def canonical_item(item: Mapping[str, Any]) -> dict[str, Any]:
    return {k: canonical_value(v) for k, v in item.items()}


def diff_items(actual: Mapping[Key, Item], expected: Mapping[Key, Item], *,
               exact_numbers: bool = True) -> list[str]:
    """Readable differences between two keyed item sets (empty when equal). With
    ``exact_numbers=False`` numbers are compared as decimals (for items read back from an
    engine that trims ``N`` text); otherwise every type tag and text must match."""
    problems = [f"missing {k}" for k in sorted(set(expected) - set(actual))]
    problems += [f"unexpected {k}" for k in sorted(set(actual) - set(expected))]
    for key in sorted(set(actual) & set(expected)):
        a, e = actual[key], expected[key]
        if not exact_numbers:
            a, e = canonical_item(a), canonical_item(e)
        if a != e:
            names = sorted(n for n in set(a) | set(e) if a.get(n) != e.get(n))
            problems.append(f"{key}: " + "; ".join(f"{n}: got {a.get(n)!r} want {e.get(n)!r}" for n in names))
    return problems


def assert_items_equal(actual: Mapping[Key, Item], expected: Mapping[Key, Item], *,
                       exact_numbers: bool = True) -> None:
    """The two item sets are equal (see :func:`diff_items`)."""
    problems = diff_items(actual, expected, exact_numbers=exact_numbers)
    assert not problems, f"{len(problems)} difference(s):\n" + "\n".join(problems[:20])


def assert_table_equals(client: Any, table: str, expected: Mapping[Key, Item]) -> None:
    """The table holds exactly these items: the same keys, each item attribute for attribute
    (numbers as decimals: the engine may trim ``N`` text; the exact text the tool sends is
    checked on its requests and dumps)."""
    assert_items_equal(table_items(client, table), expected, exact_numbers=False)


def incomplete_marked_images(client: Any, table: str, expected: Mapping[Key, Item]) -> list[str]:
    """Images whose IMAGE item is in the table although some of their expected items are
    missing or different (a violation of the IMAGE-last invariant)."""
    actual = table_items(client, table)
    bad = []
    for image_id, wanted in by_image(expected).items():
        if (f"IMAGE#{image_id}", "IMAGE") not in actual:
            continue
        if any(k not in actual or canonical_item(actual[k]) != canonical_item(i) for k, i in wanted.items()):
            bad.append(image_id)
    return bad


def check_write_requests(batches: Sequence[Sequence[Item]]) -> list[str]:
    """Problems in a sequence of BatchWriteItem requests (their put items, in arrival order):
    more than 25 puts, duplicate keys, or an IMAGE item sent before (or together with) another
    item of its image."""
    problems = []
    last_other: dict[str, int] = {}
    first_image: dict[str, int] = {}
    for n, items in enumerate(batches):
        keys = [item_key(i) for i in items]
        if len(items) > 25:
            problems.append(f"request {n} holds {len(items)} puts")
        if len(set(keys)) != len(keys):
            twice = [k for k, c in Counter(keys).items() if c > 1]
            problems.append(f"request {n} holds duplicate keys {twice}")
        for key in keys:
            if key[1] == "IMAGE":
                first_image.setdefault(image_of(key), n)
            else:
                last_other[image_of(key)] = n
    for image_id, n in first_image.items():
        if image_id in last_other and last_other[image_id] >= n:
            problems.append(f"IMAGE item of {image_id} sent in request {n}, but another item of it "
                            f"was sent in request {last_other[image_id]}")
    return problems


# --------------------------------------------------------------------------- streams


def stream_records(url: str, client: Any, table: str) -> list[dict[str, Any]]:
    """Every record of the table's stream (all shards, from TRIM_HORIZON), read with a
    ``dynamodbstreams`` client at the engine's ``url`` (DynamoDB Local serves both APIs)."""
    streams = make_streams_client(url)
    arn = client.describe_table(TableName=table)["Table"]["LatestStreamArn"]
    records: list[dict[str, Any]] = []
    description = streams.describe_stream(StreamArn=arn)["StreamDescription"]
    for shard in description["Shards"]:
        iterator = streams.get_shard_iterator(StreamArn=arn, ShardId=shard["ShardId"],
                                              ShardIteratorType="TRIM_HORIZON")["ShardIterator"]
        while iterator:
            page = streams.get_records(ShardIterator=iterator, Limit=1000)
            records.extend(page.get("Records", []))
            if not page.get("Records"):
                break
            iterator = page.get("NextShardIterator")
    return records


def record_key(record: Mapping[str, Any]) -> Key:
    keys = record["dynamodb"]["Keys"]
    return keys["PK"]["S"], keys["SK"]["S"]


def first_keys(expected: Mapping[Key, Item]) -> dict[str, Key]:
    """Each image's first-written key (the tool writes it before any other item of the image):
    its smallest SK but the IMAGE item's, by partition key."""
    out: dict[str, Key] = {}
    for pk, sk in sorted(expected):
        if sk != "IMAGE":
            out.setdefault(pk, (pk, sk))
    return out
