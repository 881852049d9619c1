"""One meaning of --max-retries for writes and reads alike (issue 11.6), the rate limiter's
lock, and batches shared across images (issue 11.9).

The policy: every request is sent at most 1 + N times (--max-retries N); a retryable error,
and the UnprocessedItems/UnprocessedKeys the server leaves, are resent with backoff. The
end-to-end cases count what the tool sent through the fault proxy to DynamoDB Local.
"""

from __future__ import annotations

import json
import math
import threading
from collections import Counter
from pathlib import Path
from typing import Any, cast

import pytest
from cli import live_args, reads_items, run_cli, run_through
from conftest import TableHandle
from exports import multiplied_export
from fault_proxy import PARTIAL_BATCH, PARTIAL_BATCH_GET, THROTTLING, FaultProxy
from items import (
    GOLDEN_IDS,
    Item,
    Key,
    canonical_item,
    check_write_requests,
    first_keys,
    item_key,
    load_expected,
    put_items,
    read_jsonl,
    table_values,
)

import copy_dynamodb_dev_to_prod as tool

# --------------------------------------------------------------------------- errors: exactly 1 + N sends


@pytest.mark.parametrize("retries", [0, 2])
def test_throttled_writes_are_sent_exactly_one_plus_max_retries_times(
        ddblocal_table: TableHandle, tmp_path: Path, retries: int) -> None:
    """Every image started by an earlier copy (its first item in prod, as a stopped copy
    leaves it), so each has many batches to write: every one is throttled."""
    expected = load_expected()
    firsts = first_keys(expected)
    put_items(ddblocal_table.client, ddblocal_table.name, [expected[k] for k in firsts.values()])
    result, proxy = run_through(ddblocal_table, tmp_path, "--max-retries", str(retries),
                                faults=[THROTTLING], target="BatchWriteItem")
    assert result.returncode == 1 and result.report is not None, result.describe()
    bodies = Counter(json.dumps(p, sort_keys=True) for p in proxy.payloads("BatchWriteItem"))
    assert bodies and set(bodies.values()) == {retries + 1}, bodies.values()
    sends = proxy.key_sends("BatchWriteItem")
    # no IMAGE item after a failure
    assert set(sends) == {k for k in expected if k[1] != "IMAGE"} - set(firsts.values())
    assert set(sends.values()) == {retries + 1}
    assert result.report["images"]["failed"] == len(GOLDEN_IDS)
    assert table_values(ddblocal_table.client, ddblocal_table.name) == \
        {k: canonical_item(expected[k]) for k in firsts.values()}
    # One error per image, whatever number of its batches failed, counting its own items.
    errors = {e["file"]: e["message"] for e in result.report["errors"]}
    assert len(result.report["errors"]) == len(errors) == len(GOLDEN_IDS), result.report["errors"]
    for image_id in GOLDEN_IDS:
        lost = sum(1 for k in expected if k[0] == f"IMAGE#{image_id}" and k[1] != "IMAGE") - 1
        assert errors[f"{image_id}.json"].startswith(f"{lost} item(s) not written: "), errors
        assert "ThrottlingException" in errors[f"{image_id}.json"]


def test_a_first_item_not_written_stops_its_image(ddblocal_table: TableHandle, tmp_path: Path) -> None:
    """Throttled from the start: each image's first item is sent (1 + N times) and lost, and
    nothing else of the image is sent, so an image prod lacks stays absent whole."""
    result, proxy = run_through(ddblocal_table, tmp_path, "--max-retries", "1",
                                faults=[THROTTLING], target="BatchWriteItem")
    assert result.returncode == 1 and result.report is not None, result.describe()
    expected = load_expected()
    firsts = first_keys(expected)
    sends = proxy.key_sends("BatchWriteItem")
    assert sorted(sends) == sorted(firsts.values()) and set(sends.values()) == {2}, sends
    assert result.report["images"]["failed"] == len(GOLDEN_IDS)
    assert table_values(ddblocal_table.client, ddblocal_table.name) == {}


@pytest.mark.parametrize("retries", [0, 2])
def test_throttled_reads_are_sent_exactly_one_plus_max_retries_times(
        ddblocal_table: TableHandle, tmp_path: Path, retries: int) -> None:
    result, proxy = run_through(ddblocal_table, tmp_path, "--max-retries", str(retries),
                                faults=[THROTTLING], target="BatchGetItem", live=False)
    assert result.returncode == 1 and result.report is not None, result.describe()
    bodies = Counter(json.dumps(p, sort_keys=True) for p in proxy.payloads("BatchGetItem"))
    assert bodies and set(bodies.values()) == {retries + 1}, bodies.values()
    images = result.report["images"]
    assert images["failed"] == images["total"] == len(GOLDEN_IDS), images
    assert all("ThrottlingException" in e["message"] for e in result.report["errors"])


@pytest.mark.parametrize("retries", [0, 2])
def test_throttled_first_item_reads_are_sent_exactly_one_plus_max_retries_times(
        ddblocal_table: TableHandle, tmp_path: Path, retries: int) -> None:
    """The key lookup asking whether prod holds an image's first item: a read that never got
    an answer fails its images; it never counts as "nothing of the image in prod"."""
    result, proxy = run_through(ddblocal_table, tmp_path, "--max-retries", str(retries),
                                faults=[THROTTLING], target="BatchGetItem", only=reads_items)
    assert result.returncode == 1 and result.report is not None, result.describe()
    bodies = Counter(json.dumps(p, sort_keys=True) for p in proxy.payloads("BatchGetItem")
                     if "ProjectionExpression" not in p["RequestItems"][ddblocal_table.name])
    assert set(bodies.values()) == {retries + 1}, bodies
    assert sum(len(json.loads(b)["RequestItems"][ddblocal_table.name]["Keys"]) for b in bodies) \
        == len(GOLDEN_IDS), bodies
    images = result.report["images"]
    assert images["failed"] == images["total"] == len(GOLDEN_IDS), images
    assert all("ThrottlingException" in e["message"] for e in result.report["errors"])
    assert table_values(ddblocal_table.client, ddblocal_table.name) == {}


def test_throttled_table_check_is_sent_one_plus_max_retries_times(ddblocal_table: TableHandle,
                                                                  tmp_path: Path) -> None:
    """The table check before the work (DescribeTable) follows the same policy, then gives
    one line and exit 2."""
    result, proxy = run_through(ddblocal_table, tmp_path, "--max-retries", "3",
                                faults=[THROTTLING], target="DescribeTable")
    assert result.returncode == 2, result.describe()
    assert proxy.calls == {"DescribeTable": 4}, proxy.calls
    assert len(result.stderr.strip().splitlines()) == 1 and "ThrottlingException" in result.stderr


# --------------------------------------------------------------------------- unprocessed items and keys


def test_unprocessed_items_are_resent_and_count_as_retries(ddblocal_table: TableHandle,
                                                           tmp_path: Path) -> None:
    """Every write comes back partly unprocessed: with --max-retries 2 no item is sent more
    than 3 times; the unprocessed ones are resent; an image that still has unwritten items
    fails and gets no IMAGE item; what the report calls written is in the table."""
    result, proxy = run_through(ddblocal_table, tmp_path, "--max-retries", "2", "--dump-items",
                                str(tmp_path / "written.jsonl"), faults=[PARTIAL_BATCH],
                                target="BatchWriteItem")
    assert result.report is not None, result.describe()
    sends = proxy.key_sends("BatchWriteItem")
    assert max(sends.values()) <= 3, sends.most_common(3)
    assert max(sends.values()) >= 2, "no unprocessed item was resent"
    table = table_values(ddblocal_table.client, ddblocal_table.name)
    written = {item_key(i) for i in read_jsonl(tmp_path / "written.jsonl")}
    assert written == set(table) and result.report["items"]["written"] == len(table)
    expected = load_expected()
    for image_id in GOLDEN_IDS:
        keys = {k for k in expected if k[0] == f"IMAGE#{image_id}"}
        if (f"IMAGE#{image_id}", "IMAGE") in table:
            assert keys <= set(table), f"{image_id} marked complete with items missing"
        else:
            assert image_id in result.report["failed_images"], image_id
    failed = result.report["images"]["failed"]
    assert failed + result.report["images"]["copied"] == len(GOLDEN_IDS)
    if failed:
        assert result.returncode == 1
        assert any("unprocessed" in e["message"] for e in result.report["errors"]), result.report["errors"]


def prepare_prod(table: TableHandle) -> dict[Key, Item]:
    """Two images complete, one without its IMAGE item and a few others, two absent."""
    expected = load_expected()
    ids = sorted(GOLDEN_IDS)
    prod = {k: v for k, v in expected.items() if k[0] in (f"IMAGE#{ids[0]}", f"IMAGE#{ids[1]}")}
    partial = sorted(k for k in expected if k[0] == f"IMAGE#{ids[2]}" and k[1] != "IMAGE")
    prod.update({k: expected[k] for k in partial[::3]})
    put_items(table.client, table.name, prod.values())
    return prod


def test_unprocessed_keys_on_reads_are_asked_again(ddblocal_table: TableHandle, tmp_path: Path) -> None:
    """Every read comes back partly unprocessed (the proxy's partial_batch_get): the tool asks
    again for exactly the missing keys, so its decisions are those of a run without faults;
    a key dropped would make an image in prod look absent, or an item look missing."""
    prod = prepare_prod(ddblocal_table)
    baseline, _ = run_through(ddblocal_table, tmp_path, "--dump-items", str(tmp_path / "plan.jsonl"),
                              faults=[], target="BatchGetItem", live=False, name="plan")
    assert baseline.report is not None, baseline.describe()
    assert baseline.report["images"]["skipped_existing"] == 2
    result, proxy = run_through(ddblocal_table, tmp_path, "--max-retries", "30", "--dump-items",
                                str(tmp_path / "written.jsonl"), faults=[PARTIAL_BATCH_GET],
                                target="BatchGetItem")
    assert result.returncode == 0 and result.report is not None, result.describe()
    assert proxy.injected.get(PARTIAL_BATCH_GET, 0) >= 2
    assert max(proxy.key_sends("BatchGetItem").values()) >= 2, "no unprocessed key was asked again"
    for key in ("copied", "skipped_existing", "failed"):
        assert result.report["images"][key] == baseline.report["images"][key], key
    for key in ("to_write", "unchanged"):
        assert result.report["items"][key] == baseline.report["items"][key], key
    written = {item_key(i): i for i in read_jsonl(tmp_path / "written.jsonl")}
    planned = {item_key(i): i for i in read_jsonl(tmp_path / "plan.jsonl")}
    assert written == planned
    assert table_values(ddblocal_table.client, ddblocal_table.name) == \
        {k: canonical_item(v) for k, v in load_expected().items()}
    assert not set(prod) & set(written), "an item prod held was written again"


def test_unprocessed_keys_count_as_retries(ddblocal_table: TableHandle, tmp_path: Path) -> None:
    """With --max-retries 1 no key is asked for more than twice; keys still unprocessed after
    that fail their images (by name), never count as absent from prod."""
    prepare_prod(ddblocal_table)
    result, proxy = run_through(ddblocal_table, tmp_path, "--max-retries", "1", faults=[PARTIAL_BATCH_GET],
                                target="BatchGetItem", live=False)
    assert result.report is not None, result.describe()
    sends = proxy.key_sends("BatchGetItem")
    assert max(sends.values()) == 2, sends.most_common(3)
    images = result.report["images"]
    assert sum(images[k] for k in ("copied", "skipped_existing", "failed", "skipped_empty",
                                   "not_reached_limit", "interrupted")) == images["total"]
    # a key left unprocessed after the last retry fails its image, it never reads as absent
    assert images["failed"] > 0 and result.returncode == 1, images
    assert all("unprocessed" in e["message"] for e in result.report["errors"]), result.report["errors"]


# --------------------------------------------------------------------------- in-process units


def test_retrier_sends_at_most_one_plus_max_retries_times() -> None:
    from botocore.exceptions import ClientError

    sleeps: list[float] = []
    throttled = ClientError(cast(Any, {"Error": {"Code": "ThrottlingException", "Message": "slow down"},
                                       "ResponseMetadata": {"HTTPStatusCode": 400}}), "BatchGetItem")
    invalid = ClientError(cast(Any, {"Error": {"Code": "ValidationException", "Message": "no"},
                                     "ResponseMetadata": {"HTTPStatusCode": 400}}), "BatchGetItem")
    for retries in (0, 1, 3):
        for outcome in ("undone", throttled):
            calls: list[int] = []

            def attempt(outcome: Any = outcome, calls: list[int] = calls) -> str | None:
                calls.append(1)
                if isinstance(outcome, Exception):
                    raise outcome
                return str(outcome)

            with pytest.raises((tool.RetriesExhausted, ClientError)):
                tool.Retrier(retries, sleep=sleeps.append).run(attempt)
            assert len(calls) == retries + 1
    calls = []

    def refused() -> str | None:
        calls.append(1)
        raise invalid

    assert len(sleeps) == 2 * (0 + 1 + 3), "one backoff before each resend"
    with pytest.raises(ClientError):
        tool.Retrier(5, sleep=sleeps.append).run(refused)
    assert len(calls) == 1, "a non-retryable error must not be resent"
    assert len(sleeps) == 2 * (0 + 1 + 3), "no backoff for an error that is not resent"


def test_rate_limiter_never_sleeps_holding_its_lock() -> None:
    """The injected sleep checks that the lock is free while it sleeps, and a second caller's
    reservation goes through while the first one is still asleep."""
    now = [0.0]
    asleep = threading.Event()
    wake = threading.Event()
    seen: list[tuple[float, bool]] = []

    def sleep(seconds: float) -> None:
        free = limiter.lock.acquire(blocking=False)
        if free:
            limiter.lock.release()
        seen.append((seconds, free))
        if threading.current_thread().name == "first":
            asleep.set()
            assert wake.wait(30)

    limiter = tool.RateLimiter(10.0, clock=lambda: now[0], sleep=sleep)
    first = threading.Thread(target=limiter.acquire, args=(25,), name="first", daemon=True)
    first.start()
    assert asleep.wait(30)
    second = threading.Thread(target=limiter.acquire, args=(25,), name="second", daemon=True)
    try:
        second.start()
        second.join(10)  # only turns a block into a failure
        assert not second.is_alive(), "the second caller was blocked by the sleeping first one"
    finally:
        wake.set()
    first.join(30)
    assert [free for _, free in seen] == [True, True], seen
    # reservations queue: the second waits for its own tokens after the first one's
    assert seen[0][0] == 2.5 and seen[1][0] == 5.0, seen  # exact: the clock is fake


# --------------------------------------------------------------------------- batches across images


def test_batches_are_shared_across_images_with_the_image_item_last(ddblocal_table: TableHandle,
                                                                   tmp_path: Path) -> None:
    export_dir = tmp_path / "export"
    expected = list(multiplied_export(export_dir, 2).values())
    n_images = len(GOLDEN_IDS) * 2
    proxy = FaultProxy(ddblocal_table.url, rate=0.0)
    try:
        result = run_cli(live_args(ddblocal_table.name, proxy.url, export_dir), report=tmp_path / "r.json")
    finally:
        proxy.stop()
    assert result.returncode == 0, result.describe()
    writes = proxy.batch_writes()
    assert check_write_requests(writes) == []
    assert sum(len(w) for w in writes) == len(expected), "an item was sent twice"
    others = sum(1 for i in expected if i["SK"]["S"] != "IMAGE")
    floor = math.ceil(others / 25) + math.ceil(n_images / 25)
    # Slack 2 (measured on DynamoDB Local: 62 requests for a floor of 62 here, 122 of 122 at
    # 20 images; one remainder batch per image, as before, gives 74 here). Batches are filled
    # across images, so a short batch goes only when waiting could only stall: once after the
    # reader has finished (the remainder of all images' other items), and once more for the
    # IMAGE items that must follow that very batch (they cannot ride in it, and no other
    # items are left to share theirs). Each costs at most one request beyond the floor.
    slack = 2
    assert len(writes) <= floor + slack, (len(writes), floor)
    mixed = sum(1 for w in writes if len({i["PK"]["S"] for i in w}) > 1)
    assert mixed > 0, "no batch holds items of two images"
    assert table_values(ddblocal_table.client, ddblocal_table.name) == \
        {item_key(i): canonical_item(i) for i in expected}
