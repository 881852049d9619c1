"""Live runs of the CLI against DynamoDB Local (subprocess; --overwrite-changed also on moto),
plus in-process unit tests of the writer, the prod diff, the rate limiter and the item budget."""

from __future__ import annotations

import json
import random
import threading
import time
from collections import Counter
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from cli import CliResult, copy_in_process, in_process_config, live_args, run_cli
from conftest import TableHandle
from fault_proxy import FaultProxy
from items import (
    GOLDEN_EXPORT,
    GOLDEN_IDS,
    assert_items_equal,
    assert_table_equals,
    by_key,
    change_a_receipt_word,
    check_write_requests,
    count_types,
    load_expected,
    record_key,
    stream_records,
    table_items,
)
from servers import REGION, make_client

import copy_dynamodb_dev_to_prod as tool

EXPECTED = load_expected()


def first_run(table: TableHandle, tmp_path: Path, *extra: str) -> CliResult:
    result = run_cli(live_args(table.name, table.url, GOLDEN_EXPORT, *extra), report=tmp_path / "r1.json")
    assert result.returncode == 0, result.describe()
    return result


# --------------------------------------------------------------------------- golden copy


def test_golden_copy_is_exact_and_report_matches_table(ddblocal_table: TableHandle, tmp_path: Path) -> None:
    result = first_run(ddblocal_table, tmp_path)
    assert_table_equals(ddblocal_table.client, ddblocal_table.name, EXPECTED)

    report = result.report
    assert report is not None
    table = table_items(ddblocal_table.client, ddblocal_table.name)
    by_type = count_types(table.values())
    assert report["mode"] == "live"
    assert report["items"]["written"] == len(table) == len(EXPECTED)
    assert report["items"]["unchanged"] == 0
    assert report["items"]["conflicts"] == 0 and report["conflicts"] == []
    assert report["images"]["total"] == len(GOLDEN_IDS)
    assert report["images"]["copied"] == by_type["IMAGE"] == len(GOLDEN_IDS)
    assert report["images"]["failed"] == 0 and report["failed_images"] == [] and report["errors"] == []
    type_of_key = {kind.export_key: kind.type for kind in tool.KINDS}
    assert {type_of_key[k]: n for k, n in report["entities"].items() if n} == dict(by_type)
    assert f"{len(EXPECTED):,}" in result.stdout


def test_second_run_writes_nothing(ddblocal_table: TableHandle, tmp_path: Path) -> None:
    first_run(ddblocal_table, tmp_path)
    records_before = stream_records(ddblocal_table.url, ddblocal_table.client, ddblocal_table.name)
    assert len(records_before) == len(EXPECTED)
    assert {r["eventName"] for r in records_before} == {"INSERT"}
    assert {record_key(r) for r in records_before} == set(EXPECTED)

    again = run_cli(live_args(ddblocal_table.name, ddblocal_table.url), report=tmp_path / "r2.json")
    assert again.returncode == 0, again.describe()
    assert again.report is not None
    assert again.report["items"]["written"] == 0
    assert again.report["images"]["skipped_existing"] == len(GOLDEN_IDS)
    assert again.report["images"]["copied"] == 0

    resync = run_cli(live_args(ddblocal_table.name, ddblocal_table.url, GOLDEN_EXPORT, "--no-skip-existing"),
                     report=tmp_path / "r3.json")
    assert resync.returncode == 0, resync.describe()
    assert resync.report is not None
    assert resync.report["items"]["written"] == 0
    assert resync.report["items"]["unchanged"] == len(EXPECTED)
    assert resync.report["items"]["conflicts"] == 0

    assert_table_equals(ddblocal_table.client, ddblocal_table.name, EXPECTED)
    records_after = stream_records(ddblocal_table.url, ddblocal_table.client, ddblocal_table.name)
    assert records_after == records_before, "re-runs must not write anything"


def test_half_written_image_is_completed_without_rewriting(ddblocal_table: TableHandle,
                                                           tmp_path: Path) -> None:
    image_id = GOLDEN_IDS[0]
    own = [i for i in EXPECTED.values() if i["PK"]["S"] == f"IMAGE#{image_id}"]
    planted = [i for i in own if i["SK"]["S"] != "IMAGE"][::2]
    assert len(planted) > 25
    for item in planted:
        ddblocal_table.client.put_item(TableName=ddblocal_table.name, Item=item)

    result = run_cli(live_args(ddblocal_table.name, ddblocal_table.url), report=tmp_path / "r.json")
    assert result.returncode == 0, result.describe()
    assert_table_equals(ddblocal_table.client, ddblocal_table.name, EXPECTED)
    assert result.report is not None
    assert result.report["items"]["written"] == len(EXPECTED) - len(planted)
    assert result.report["items"]["unchanged"] == len(planted)

    records = stream_records(ddblocal_table.url, ddblocal_table.client, ddblocal_table.name)
    per_key = Counter(record_key(r) for r in records)
    planted_keys = {(i["PK"]["S"], i["SK"]["S"]) for i in planted}
    rewritten = sorted(k for k in planted_keys if per_key[k] != 1)
    assert not rewritten, f"pre-existing items were written again: {rewritten[:5]}"
    assert {r["eventName"] for r in records} == {"INSERT"}


def receipt_word(image_index: int = 0) -> dict[str, Any]:
    image_id = GOLDEN_IDS[image_index]
    return next(i for i in EXPECTED.values()
                if i["TYPE"]["S"] == "RECEIPT_WORD" and i["PK"]["S"] == f"IMAGE#{image_id}")


def test_prod_embedding_progress_is_left_alone(ddblocal_table: TableHandle, tmp_path: Path) -> None:
    first_run(ddblocal_table, tmp_path)
    word = dict(receipt_word())
    word["embedding_status"] = {"S": "SUCCESS"}
    word["GSI1PK"] = {"S": "EMBEDDING_STATUS#SUCCESS"}
    ddblocal_table.client.put_item(TableName=ddblocal_table.name, Item=word)

    result = run_cli(live_args(ddblocal_table.name, ddblocal_table.url, GOLDEN_EXPORT, "--no-skip-existing"),
                     report=tmp_path / "r.json")
    assert result.returncode == 0, result.describe()
    assert result.report is not None
    assert result.report["items"]["conflicts"] == 0 and result.report["conflicts"] == []
    assert result.report["items"]["written"] == 0
    assert word["SK"]["S"] not in result.stdout
    expected = {**EXPECTED, (word["PK"]["S"], word["SK"]["S"]): word}
    assert_table_equals(ddblocal_table.client, ddblocal_table.name, expected)


def label_item() -> dict[str, Any]:
    return next(i for i in EXPECTED.values() if i["TYPE"]["S"] == "RECEIPT_WORD_LABEL"
                and i["validation_status"]["S"] != "INVALID")


def test_changed_label_is_a_conflict_kept_unless_overwrite(ddblocal_table: TableHandle,
                                                           tmp_path: Path) -> None:
    first_run(ddblocal_table, tmp_path)
    original = label_item()
    changed = dict(original)
    changed["validation_status"] = {"S": "INVALID"}
    changed["GSI3PK"] = {"S": "VALIDATION_STATUS#INVALID"}
    ddblocal_table.client.put_item(TableName=ddblocal_table.name, Item=changed)
    with_change = {**EXPECTED, (changed["PK"]["S"], changed["SK"]["S"]): changed}

    result = run_cli(live_args(ddblocal_table.name, ddblocal_table.url, GOLDEN_EXPORT, "--no-skip-existing"),
                     report=tmp_path / "r.json")
    assert result.returncode in (0, 1), result.describe()
    assert result.report is not None
    assert result.report["items"]["conflicts"] == 1
    assert result.report["items"]["written"] == 0
    (conflict,) = result.report["conflicts"]
    assert conflict["PK"] == original["PK"]["S"] and conflict["SK"] == original["SK"]["S"]
    assert sorted(conflict["attributes"]) == ["GSI3PK", "validation_status"]
    out = result.stdout + result.stderr
    assert original["SK"]["S"] in result.stdout, "the conflict must be listed in the summary"
    assert "validation_status" in out and "GSI3PK" in out
    assert_table_equals(ddblocal_table.client, ddblocal_table.name, with_change)

    # with an explicit --skip-existing the image is skipped: still kept, and a warning says so
    # (--overwrite-changed alone implies --no-skip-existing)
    skip = run_cli(live_args(ddblocal_table.name, ddblocal_table.url, GOLDEN_EXPORT, "--overwrite-changed",
                             "--skip-existing"), cwd=tmp_path)
    assert skip.returncode == 0, skip.describe()
    assert "--overwrite-changed with --skip-existing" in skip.stderr
    assert_table_equals(ddblocal_table.client, ddblocal_table.name, with_change)

    overwrite = run_cli(live_args(ddblocal_table.name, ddblocal_table.url, GOLDEN_EXPORT,
                                  "--no-skip-existing", "--overwrite-changed"), report=tmp_path / "r2.json")
    assert overwrite.returncode == 0, overwrite.describe()
    assert overwrite.report is not None
    assert overwrite.report["items"]["written"] == 1
    assert overwrite.report["items"]["conflicts"] == 1
    assert overwrite.report["conflicts"][0]["SK"] == original["SK"]["S"]
    assert_table_equals(ddblocal_table.client, ddblocal_table.name, EXPECTED)


def copy_golden_on(table: TableHandle, tmp_path: Path) -> None:
    proc = run_cli(live_args(table.name, table.url, GOLDEN_EXPORT), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr


def test_overwrite_changed_overwrites_images_already_in_prod(fresh_table: TableHandle,
                                                             tmp_path: Path) -> None:
    copy_golden_on(fresh_table, tmp_path)
    original, _ = change_a_receipt_word(fresh_table.client, fresh_table.name)
    proc = run_cli(live_args(fresh_table.name, fresh_table.url, GOLDEN_EXPORT, "--overwrite-changed"),
                   cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    key = (original["PK"]["S"], original["SK"]["S"])
    assert table_items(fresh_table.client, fresh_table.name)[key] == original
    # a live --overwrite-changed keeps a journal (default name in the working directory): the
    # changed word prod held, recorded before it was overwritten
    (journal,) = tmp_path.glob("copy-journal-*.jsonl")
    records = [json.loads(line) for line in journal.read_text(encoding="utf-8").splitlines()]
    assert records[0]["journal"] and records[0]["table"] == fresh_table.name
    (write,) = [r for r in records[1:] if (r["PK"], r["SK"]) == key]
    assert write["op"] == "put" and write["before"] != original and write["before"]["PK"] == original["PK"]


def test_overwrite_changed_with_explicit_skip_existing_warns(fresh_table: TableHandle,
                                                             tmp_path: Path) -> None:
    copy_golden_on(fresh_table, tmp_path)
    _, changed = change_a_receipt_word(fresh_table.client, fresh_table.name)
    proc = run_cli(live_args(fresh_table.name, fresh_table.url, GOLDEN_EXPORT, "--overwrite-changed",
                             "--skip-existing"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "--overwrite-changed with --skip-existing" in proc.stderr
    key = (changed["PK"]["S"], changed["SK"]["S"])
    assert table_items(fresh_table.client, fresh_table.name)[key] == changed


def query_gsi1_all(client: Any, table: str, prefix: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    kwargs: dict[str, Any] = {
        "TableName": table, "IndexName": "GSI1",
        "KeyConditionExpression": "GSI1PK = :pk AND begins_with(GSI1SK, :sk)",
        "ExpressionAttributeValues": {":pk": {"S": "EMBEDDING_STATUS#NONE"}, ":sk": {"S": prefix}},
    }
    while True:
        page = client.query(**kwargs)
        items.extend(page["Items"])
        if "LastEvaluatedKey" not in page:
            return items
        kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]


@pytest.mark.parametrize(("prefix", "type_"), [("WORD#", "RECEIPT_WORD"), ("LINE#", "RECEIPT_LINE")])
def test_embedding_pipeline_query_finds_every_migrated_item(
    ddblocal_table: TableHandle, tmp_path: Path, prefix: str, type_: str
) -> None:
    first_run(ddblocal_table, tmp_path)
    found = query_gsi1_all(ddblocal_table.client, ddblocal_table.name, prefix)
    wanted = {k for k, i in EXPECTED.items() if i["TYPE"]["S"] == type_}
    assert len(wanted) > 50
    assert {(i["PK"]["S"], i["SK"]["S"]) for i in found} == wanted
    assert all(i["embedding_status"] == {"S": "NONE"} for i in found)


# --------------------------------------------------------------------------- request order


def test_requests_image_item_last_and_batches_valid(ddblocal_table: TableHandle, tmp_path: Path) -> None:
    proxy = FaultProxy(ddblocal_table.url, rate=0.0)
    try:
        result = run_cli(live_args(ddblocal_table.name, proxy.url, GOLDEN_EXPORT, "--max-workers", "4"),
                         report=tmp_path / "r.json")
    finally:
        proxy.stop()
    assert result.returncode == 0, result.describe()
    batches = proxy.batch_writes()
    assert check_write_requests(batches) == []
    sent = Counter((i["PK"]["S"], i["SK"]["S"]) for b in batches for i in b)
    assert set(sent) == set(EXPECTED) and max(sent.values()) == 1
    # what the tool sends is the golden items exactly, N text included (the engine trims it)
    assert_items_equal(by_key(i for b in batches for i in b), EXPECTED)
    assert_table_equals(ddblocal_table.client, ddblocal_table.name, EXPECTED)


class RecordingClient:
    """Wraps a real boto3 client; records the arguments and outcome of each batch_write_item."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.lock = threading.Lock()
        self.log: list[tuple[str, list[dict[str, Any]]]] = []

    def batch_write_item(self, **kwargs: Any) -> Any:
        items = [r["PutRequest"]["Item"] for reqs in kwargs["RequestItems"].values() for r in reqs]
        with self.lock:
            self.log.append(("sent", items))
        response = self.inner.batch_write_item(**kwargs)
        with self.lock:
            self.log.append(("done", items))
        return response

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def test_in_process_image_item_written_after_every_other_item_confirmed(ddblocal_table: TableHandle) -> None:
    """The write order that lets two keys speak for an image: its first item (smallest SK
    but the IMAGE item's) confirmed before any other item of it is sent, and every other
    item confirmed before its IMAGE item is sent."""
    cfg = in_process_config(ddblocal_table.name, ddblocal_table.url, "--max-workers", "6")
    client = RecordingClient(make_client(ddblocal_table.url))
    report = copy_in_process(cfg, client)
    assert not report.failed
    sends = [items for what, items in client.log if what == "sent"]
    assert check_write_requests(sends) == []
    done_at: dict[tuple[str, str], int] = {}
    for n, (what, items) in enumerate(client.log):
        for i in items:
            if what == "done":
                done_at[(i["PK"]["S"], i["SK"]["S"])] = n
    for n, (what, items) in enumerate(client.log):
        for i in items:
            if what == "sent" and i["SK"]["S"] == "IMAGE":
                others = [k for k in EXPECTED if k[0] == i["PK"]["S"] and k[1] != "IMAGE"]
                late = [k for k in others if done_at[k] > n]
                assert not late, f"IMAGE of {i['PK']['S']} sent before {late[:3]} were confirmed"
    firsts = {pk: (pk, sk) for pk, sk in sorted(EXPECTED, reverse=True) if sk != "IMAGE"}
    for n, (what, items) in enumerate(client.log):
        for i in items:
            first = firsts[i["PK"]["S"]]
            if what == "sent" and (i["PK"]["S"], i["SK"]["S"]) != first:
                assert done_at[first] < n, f"{i['SK']['S']} sent before {first} was confirmed"
    assert_table_equals(ddblocal_table.client, ddblocal_table.name, EXPECTED)


# --------------------------------------------------------------------------- BatchWriter


def item(n: int) -> dict[str, Any]:
    return {"PK": {"S": "IMAGE#x"}, "SK": {"S": f"LINE#{n:05d}"}, "TYPE": {"S": "LINE"}}


class FakeBatchClient:
    """batch_write_item answers from a script: each entry is how many of the sent requests are
    returned as UnprocessedItems (the last ones), or an exception to raise."""

    def __init__(self, script: list[Any], table: str = "T") -> None:
        self.script, self.table = list(script), table
        self.calls: list[list[dict[str, Any]]] = []

    def batch_write_item(self, RequestItems: dict[str, Any]) -> dict[str, Any]:
        reqs = RequestItems[self.table]
        self.calls.append([r["PutRequest"]["Item"] for r in reqs])
        step = self.script.pop(0) if self.script else 0
        if isinstance(step, Exception):
            raise step
        unprocessed = reqs[len(reqs) - step:] if step else []
        return {"UnprocessedItems": {self.table: unprocessed} if unprocessed else {}}


def writer_for(client: Any, max_retries: int, sleeps: list[float] | None = None,
               limiter: Any = None) -> Any:
    retrier = tool.Retrier(max_retries, sleep=(sleeps.append if sleeps is not None else lambda s: None))
    retrier.rng = random.Random(1)
    return tool.BatchWriter(client, "T", retrier, limiter)


def throttled() -> Exception:
    from botocore.exceptions import ClientError

    response: Any = {"Error": {"Code": "ProvisionedThroughputExceededException", "Message": "slow"},
                     "ResponseMetadata": {"HTTPStatusCode": 400}}
    return ClientError(response, "BatchWriteItem")


def expected_backoff(retries: int, seed: int = 1) -> list[float]:
    """The documented backoff of retries 1..``retries``, full jitter: uniform(0, min(cap, base *
    2**retry)), drawn from the same seeded generator ``writer_for`` gives the Retrier."""
    rng = random.Random(seed)
    return [rng.uniform(0, min(tool.BACKOFF_CAP, tool.BACKOFF_BASE * 2 ** retry))
            for retry in range(1, retries + 1)]


def test_batch_writer_resends_exactly_the_unprocessed_items() -> None:
    client = FakeBatchClient([10, 3, 0])
    sleeps: list[float] = []
    items = [item(n) for n in range(25)]
    writer_for(client, 5, sleeps).write(items)
    assert [len(c) for c in client.calls] == [25, 10, 3]
    assert client.calls[1] == items[15:] and client.calls[2] == items[22:]
    assert len(sleeps) == 2
    assert sleeps == expected_backoff(2)


def test_batch_writer_backoff_is_bounded_and_gives_up_after_max_retries() -> None:
    max_retries = 6
    client = FakeBatchClient([2] * 100)
    sleeps: list[float] = []
    items = [item(n) for n in range(5)]
    with pytest.raises(tool.WriteError) as info:
        writer_for(client, max_retries, sleeps).write(items)
    assert len(client.calls) == max_retries + 1, "one first attempt plus max_retries re-sends"
    assert info.value.unwritten == items[3:]
    assert "2 item" in str(info.value)
    assert len(sleeps) == max_retries
    for attempt, delay in enumerate(sleeps, start=1):
        assert 0 <= delay <= min(tool.BACKOFF_CAP, tool.BACKOFF_BASE * 2 ** attempt)
    assert sleeps == expected_backoff(max_retries)


def test_batch_writer_backoff_is_capped_for_many_retries() -> None:
    client = FakeBatchClient([1] * 100)
    sleeps: list[float] = []
    with pytest.raises(tool.WriteError):
        writer_for(client, 40, sleeps).write([item(1), item(2)])
    assert len(sleeps) == 40 and max(sleeps) <= tool.BACKOFF_CAP
    assert sum(sleeps) <= 40 * tool.BACKOFF_CAP
    assert sleeps == expected_backoff(40)


def test_batch_writer_max_retries_zero_sends_once() -> None:
    client = FakeBatchClient([1])
    with pytest.raises(tool.WriteError) as info:
        writer_for(client, 0).write([item(1), item(2)])
    assert len(client.calls) == 1 and info.value.unwritten == [item(2)]


def test_batch_writer_retries_throttling_errors_then_succeeds() -> None:
    client = FakeBatchClient([throttled(), throttled(), 0])
    sleeps: list[float] = []
    items = [item(n) for n in range(3)]
    writer_for(client, 5, sleeps).write(items)
    assert client.calls == [items, items, items] and len(sleeps) == 2
    assert sleeps == expected_backoff(2)


def test_batch_writer_throttled_until_out_of_retries_reports_every_pending_item() -> None:
    client = FakeBatchClient([4] + [throttled()] * 10)
    items = [item(n) for n in range(10)]
    with pytest.raises(tool.WriteError) as info:
        writer_for(client, 3).write(items)
    assert len(client.calls) == 4
    assert info.value.unwritten == items[6:]


def test_batch_writer_non_retryable_error_reports_every_pending_item() -> None:
    client = FakeBatchClient([4, RuntimeError("bug")])
    items = [item(n) for n in range(10)]
    with pytest.raises(tool.WriteError) as info:
        writer_for(client, 5).write(items)
    assert len(client.calls) == 2
    assert info.value.unwritten == items[6:]


def test_batch_writer_rejects_oversized_or_duplicate_batches() -> None:
    writer = writer_for(FakeBatchClient([]), 1)
    with pytest.raises(ValueError):
        writer.write([item(n) for n in range(26)])
    with pytest.raises(ValueError):
        writer.write([item(1), item(1)])
    with pytest.raises(ValueError):
        writer.write([])


def test_batch_writer_uses_the_rate_limiter_for_resends() -> None:
    acquired: list[int] = []

    class Limiter:
        def acquire(self, n: int) -> None:
            acquired.append(n)

    writer_for(FakeBatchClient([7, 0]), 3, limiter=Limiter()).write([item(n) for n in range(20)])
    assert acquired == [20, 7]


# --------------------------------------------------------------------------- diff_with_prod


def test_diff_compares_numbers_as_decimals_and_maps_by_key() -> None:
    ours: dict[str, Any] = {
            "PK": {"S": "IMAGE#a"}, "SK": {"S": "LINE#00001"}, "TYPE": {"S": "LINE"},
            "confidence": {"N": "0.95000000000000000000"},
            "bounding_box": {"M": {"x": {"N": "0.10000000000000000000"}, "y": {"N": "1.0"}}},
            "n": {"N": "100"}}
    prod: dict[str, Any] = {
            "PK": {"S": "IMAGE#a"}, "SK": {"S": "LINE#00001"}, "TYPE": {"S": "LINE"},
            "confidence": {"N": "0.95"}, "n": {"N": "1E+2"},
            "bounding_box": {"M": {"y": {"N": "1"}, "x": {"N": "0.1"}}}}
    diff = tool.diff_with_prod([ours], {"LINE#00001": prod}, overwrite_changed=False)
    assert diff.to_write == [] and diff.conflicts == [] and diff.unchanged == 1


def test_diff_missing_changed_extra_and_prod_progress() -> None:
    base = {"PK": {"S": "IMAGE#a"}, "TYPE": {"S": "RECEIPT_WORD"}, "embedding_status": {"S": "NONE"},
            "GSI1PK": {"S": "EMBEDDING_STATUS#NONE"}, "text": {"S": "hi"}, "confidence": {"N": "0.90"}}
    items = [dict(base, SK={"S": f"W{n}"}) for n in range(5)]
    prod = {
        "W1": dict(items[1], confidence={"N": "0.9"}),                                 # identical
        "W2": dict(items[2], text={"S": "changed"}),                                    # conflict
        "W3": dict(items[3], embedding_status={"S": "SUCCESS"},
                   GSI1PK={"S": "EMBEDDING_STATUS#SUCCESS"}),                           # prod progress
        "W4": dict(items[4], extra={"S": "prod only"}),                                 # conflict
    }
    diff = tool.diff_with_prod(items, prod, overwrite_changed=False)
    assert diff.to_write == [items[0]]
    assert diff.unchanged == 1 and diff.prod_progress == 1
    assert [(c["SK"], c["attributes"]) for c in diff.conflicts] == [("W2", ["text"]), ("W4", ["extra"])]
    assert all(c["PK"] == "IMAGE#a" for c in diff.conflicts)

    over = tool.diff_with_prod(items, prod, overwrite_changed=True)
    assert over.to_write == [items[0], items[2], items[4]]
    assert len(over.conflicts) == 2 and over.prod_progress == 1


def test_diff_embedding_fields_are_prod_owned_only_for_receipt_lines_and_words() -> None:
    ours = {"PK": {"S": "IMAGE#a"}, "SK": {"S": "X"}, "TYPE": {"S": "RECEIPT_WORD_LABEL"},
            "validation_status": {"S": "NONE"}, "GSI3PK": {"S": "VALIDATION_STATUS#NONE"}}
    prod = dict(ours, validation_status={"S": "VALID"}, GSI3PK={"S": "VALIDATION_STATUS#VALID"})
    diff = tool.diff_with_prod([ours], {"X": prod}, overwrite_changed=False)
    assert [c["attributes"] for c in diff.conflicts] == [["GSI3PK", "validation_status"]]
    # an embedding-status change together with a real change is a conflict
    word = {"PK": {"S": "IMAGE#a"}, "SK": {"S": "W"}, "TYPE": {"S": "RECEIPT_WORD"},
            "embedding_status": {"S": "NONE"}, "text": {"S": "a"}}
    prod_word = dict(word, embedding_status={"S": "SUCCESS"}, text={"S": "b"})
    diff = tool.diff_with_prod([word], {"W": prod_word}, overwrite_changed=False)
    assert len(diff.conflicts) == 1 and diff.prod_progress == 0


def test_diff_with_golden_items_read_back_with_trimmed_numbers() -> None:
    def trim(v: Any) -> Any:
        (tag, x), = v.items()
        if tag == "N":
            return {"N": str(Decimal(x).normalize()) if Decimal(x) != 0 else "0"}
        if tag == "M":
            return {"M": {k: trim(y) for k, y in reversed(list(x.items()))}}
        if tag == "L":
            return {"L": [trim(y) for y in x]}
        return v

    image_id = GOLDEN_IDS[2]
    items = [i for i in EXPECTED.values() if i["PK"]["S"] == f"IMAGE#{image_id}"]
    prod = {i["SK"]["S"]: {k: trim(v) for k, v in i.items()} for i in items}
    assert any(prod[i["SK"]["S"]] != i for i in items)
    diff = tool.diff_with_prod(items, prod, overwrite_changed=False)
    assert diff.unchanged == len(items) and not diff.to_write and not diff.conflicts


# --------------------------------------------------------------------------- RateLimiter


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        assert s >= 0
        self.slept.append(s)
        self.now += s


def test_rate_limiter_average_rate() -> None:
    c = FakeClock()
    limiter = tool.RateLimiter(100.0, clock=c.clock, sleep=c.sleep)
    start = c.now
    for _ in range(40):
        limiter.acquire(25)
    elapsed = c.now - start
    assert 1000 / 100 - 1.0 <= elapsed <= 1000 / 100 + 0.01
    # exact with the fake clock: the bucket starts empty, every batch waits for its own 25 tokens
    assert c.slept == [0.25] * 40 and elapsed == 10.0


def test_rate_limiter_burst_is_bounded_after_idle() -> None:
    c = FakeClock()
    limiter = tool.RateLimiter(50.0, clock=c.clock, sleep=c.sleep)
    c.now += 3600  # idle for an hour: at most one second's worth (or one batch) is banked
    start = c.now
    for _ in range(20):
        limiter.acquire(25)
    elapsed = c.now - start
    assert elapsed >= (500 - 50) / 50 - 1e-9
    assert elapsed <= 500 / 50 + 0.01
    # exact: one second's worth (50 tokens, two batches) banked, every later batch waits 0.5 s
    assert c.slept == [0.5] * 18 and elapsed == 9.0


def test_rate_limiter_small_rate_still_admits_a_full_batch() -> None:
    c = FakeClock()
    limiter = tool.RateLimiter(2.0, clock=c.clock, sleep=c.sleep)
    limiter.acquire(25)
    limiter.acquire(25)
    assert c.slept == [12.5, 12.5] and c.now - 1000.0 == 50 / 2.0


def test_rate_limiter_threads_share_the_budget() -> None:
    limiter = tool.RateLimiter(400.0)
    start = time.monotonic()

    def work() -> None:
        for _ in range(4):
            limiter.acquire(25)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    elapsed = time.monotonic() - start
    assert elapsed >= 400 / 400 - 0.1, f"400 items at 400/s took only {elapsed:.2f}s"


# --------------------------------------------------------------------------- ItemBudget


def test_item_budget_blocks_until_released() -> None:
    budget = tool.ItemBudget(100)
    budget.acquire(60)
    budget.acquire(40)
    got = threading.Event()

    def take() -> None:
        budget.acquire(10)
        got.set()

    t = threading.Thread(target=take, daemon=True)
    t.start()
    assert not got.wait(0.2), "acquire beyond the limit must block"
    budget.release(5)
    assert not got.wait(0.1), "5 free is not enough for 10"
    budget.release(40)
    assert got.wait(2)
    assert budget.used == 65


def test_item_budget_oversized_image_runs_alone() -> None:
    budget = tool.ItemBudget(100)
    budget.acquire(500)  # empty budget: admitted
    got = threading.Event()

    def take() -> None:
        budget.acquire(1)
        got.set()

    t = threading.Thread(target=take, daemon=True)
    t.start()
    assert not got.wait(0.2)
    budget.release(500)
    assert got.wait(2)


def test_item_budget_wait_idle() -> None:
    budget = tool.ItemBudget(10)
    budget.acquire(5)
    done = threading.Event()

    def wait() -> None:
        budget.wait_idle()
        done.set()

    threading.Thread(target=wait, daemon=True).start()
    assert not done.wait(0.2)
    budget.release(5)
    assert done.wait(2)


def test_report_counts_in_process_run_match_table(ddblocal_table: TableHandle) -> None:
    """In-process run with the real client: the report agrees with a scan of the table."""
    cfg = in_process_config(ddblocal_table.name, ddblocal_table.url, "--region", REGION)
    report = copy_in_process(cfg, make_client(ddblocal_table.url))
    assert report.item_counts()["written"] == len(EXPECTED)
    assert_table_equals(ddblocal_table.client, ddblocal_table.name, EXPECTED)
