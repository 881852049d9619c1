"""Live runs through the fault-injecting proxy on DynamoDB Local: throttling, 5xx before/after the
write, partial batches (UnprocessedItems and UnprocessedKeys), dropped connections. The table must
end exactly right, or (when everything fails) hold no IMAGE item for an incomplete image."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from cli import CliResult, live_args, run_cli
from conftest import TableHandle
from exports import multiplied_export
from fault_proxy import (
    DEFAULT_FAULTS,
    DEFAULT_TARGETS,
    DROP_AFTER,
    ERROR_AFTER,
    ERROR_BEFORE,
    PARTIAL_BATCH,
    PARTIAL_BATCH_GET,
    PROVISIONED_THROUGHPUT,
    THROTTLING,
    FaultProxy,
)
from items import (
    GOLDEN_EXPORT,
    GOLDEN_IDS,
    Item,
    Key,
    assert_table_equals,
    by_image,
    check_write_requests,
    first_keys,
    images_in_table,
    incomplete_marked_images,
    item_key,
    load_expected,
    put_items,
    table_items,
)

EXPECTED = load_expected()


READ_FAULTS = (THROTTLING, PROVISIONED_THROUGHPUT, PARTIAL_BATCH_GET)


def proxy_chain(table: TableHandle, seed: int, write_rate: float, read_rate: float,
                write_faults: tuple[str, ...] = DEFAULT_FAULTS,
                read_faults: tuple[str, ...] = READ_FAULTS) -> tuple[FaultProxy, FaultProxy]:
    """CLI -> writes proxy (faults on BatchWriteItem) -> reads proxy (throttling and
    UnprocessedKeys on Query/BatchGetItem) -> DynamoDB Local."""
    reads = FaultProxy(table.url, seed=seed + 1000, rate=read_rate, faults=read_faults,
                       targets=("Query", "BatchGetItem"))
    writes = FaultProxy(reads.url, seed=seed, rate=write_rate, faults=write_faults,
                        targets=("BatchWriteItem",))
    return writes, reads

def run_through_proxies(table: TableHandle, tmp_path: Path, export_dir: Path, max_retries: str,
                        seed: int, **chain: Any) -> tuple[CliResult, FaultProxy, FaultProxy]:
    """A live run through proxy_chain(table, seed, **chain); the proxies are stopped after
    it, their counters stay readable."""
    writes, reads = proxy_chain(table, seed, **chain)
    try:
        result = run_cli(live_args(table.name, writes.url, export_dir, "--max-retries", max_retries),
                         report=tmp_path / "r.json", timeout=170)
    finally:
        writes.stop()
        reads.stop()
    return result, writes, reads



@pytest.fixture(scope="module")
def big_export(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[Key, Item]]:
    """The golden export 4 times over (20 images, ~130 BatchWriteItem calls), so that at 30%
    every fault kind is drawn many times."""
    export_dir = tmp_path_factory.mktemp("big") / "export"
    return export_dir, multiplied_export(export_dir, 4)


@pytest.mark.parametrize(("seed", "read_fault"), [(1, THROTTLING), (2, PROVISIONED_THROUGHPUT),
                                                  (3, PARTIAL_BATCH_GET)])
def test_disturbed_run_ends_exact(ddblocal_table: TableHandle, tmp_path: Path, seed: int, read_fault: str,
                                  big_export: tuple[Path, dict[Key, Item]]) -> None:
    """30% of the writes meet every kind of fault, 30% of the reads one kind (the reads are
    few: one kind per run, so that each is surely drawn); the table ends exact. Half the
    images are in prod in part, as an interrupted copy leaves them (its first item, some
    others, no IMAGE item), so the reads are both kinds: the first items of the images
    prod lacks, and every key of the partial ones."""
    export_dir, expected = big_export
    images = sorted(by_image(expected).items())
    partial = [item for _, items in images[::2]
               for n, (key, item) in enumerate(sorted(i for i in items.items() if i[0][1] != "IMAGE"))
               if n % 3 == 0]
    put_items(ddblocal_table.client, ddblocal_table.name, partial)
    result, writes, reads = run_through_proxies(ddblocal_table, tmp_path, export_dir, "8", seed,
                                                write_rate=0.3, read_rate=0.3, read_faults=(read_fault,))
    assert result.returncode == 0, result.describe()
    assert_table_equals(ddblocal_table.client, ddblocal_table.name, expected)

    report = result.report
    assert report is not None
    assert report["images"]["failed"] == 0 and report["failed_images"] == []
    assert report["images"]["copied"] == len(by_image(expected))
    assert report["items"]["written"] + report["items"]["unchanged"] == len(expected)
    assert report["items"]["unchanged"] == len(partial)
    assert report["items"]["written"] == \
        len(table_items(ddblocal_table.client, ddblocal_table.name)) - len(partial)

    injected = writes.injected
    for fault in DEFAULT_FAULTS:
        assert injected.get(fault, 0) > 0, f"fault {fault} never injected: {injected}"
    assert reads.injected.get(read_fault, 0) > 0, f"{read_fault} never injected: {reads.calls}"
    assert "Query" not in reads.calls and reads.calls["BatchGetItem"] > 1, reads.calls
    assert {op for op, _ in writes.events} == {"BatchWriteItem"}
    assert check_write_requests(writes.batch_writes()) == []


@pytest.mark.parametrize("seed", [4, 5])
def test_every_write_failing_marks_no_image_complete(ddblocal_table: TableHandle, tmp_path: Path,
                                                     seed: int) -> None:
    result, writes, _ = run_through_proxies(
        ddblocal_table, tmp_path, GOLDEN_EXPORT, "1", seed, write_rate=1.0, read_rate=0.0,
        write_faults=(ERROR_BEFORE, ERROR_AFTER, PARTIAL_BATCH, DROP_AFTER))
    assert result.returncode == 1, result.describe()
    report = result.report
    assert report is not None
    assert sorted(report["failed_images"]) == sorted(GOLDEN_IDS)
    assert report["images"]["failed"] == len(list(GOLDEN_IDS))
    assert report["images"]["copied"] == 0
    assert images_in_table(ddblocal_table.client, ddblocal_table.name) == set()
    assert incomplete_marked_images(ddblocal_table.client, ddblocal_table.name, EXPECTED) == []
    # error_after / drop_after / partial_batch applied some writes: the report must not claim more
    assert report["items"]["written"] <= len(table_items(ddblocal_table.client, ddblocal_table.name))
    assert check_write_requests(writes.batch_writes()) == []


def test_every_call_failing_reports_every_image_failed(ddblocal_table: TableHandle, tmp_path: Path) -> None:
    """Reads fail too (the prod check cannot even start): exit 1, nothing written, and the report
    must not read as a clean run of 0 images. DescribeTable is spared: when it fails too, the
    table check before the copy stops the run with one line (tests/test_configuration.py)."""
    proxy = FaultProxy(ddblocal_table.url, seed=7, rate=1.0, faults=(THROTTLING, ERROR_BEFORE),
                       targets=DEFAULT_TARGETS)
    try:
        result = run_cli(live_args(ddblocal_table.name, proxy.url, GOLDEN_EXPORT, "--max-retries", "1"),
                         report=tmp_path / "r.json", timeout=170)
    finally:
        proxy.stop()
    assert result.returncode == 1, result.describe()
    assert table_items(ddblocal_table.client, ddblocal_table.name) == {}
    report = result.report
    assert report is not None, "a failed run must still write its report"
    assert sorted(report["failed_images"]) == sorted(GOLDEN_IDS), report
    assert report["images"]["failed"] == len(list(GOLDEN_IDS))


def test_max_retries_counts_retries_not_extra_ones(ddblocal_table: TableHandle, tmp_path: Path) -> None:
    """--max-retries N: every request is sent at most N + 1 times; with N = 0 each batch is
    sent exactly once: each image's first item in exactly one request, and nothing after it
    (an image's other items wait for its first, its IMAGE item for all of them)."""
    result, writes, _ = run_through_proxies(ddblocal_table, tmp_path, GOLDEN_EXPORT, "0", 9, write_rate=1.0,
                                            read_rate=0.0, write_faults=(ERROR_BEFORE,))
    assert result.returncode == 1, result.describe()
    sent = Counter(item_key(i) for batch in writes.batch_writes() for i in batch)
    assert [k for k, n in sent.items() if n > 1] == [], "items sent twice with --max-retries 0"
    assert set(sent) == set(first_keys(EXPECTED).values())
    assert table_items(ddblocal_table.client, ddblocal_table.name) == {}


def test_report_of_faulty_run_lists_reasons(ddblocal_table: TableHandle, tmp_path: Path) -> None:
    """Each failed image's report entry says why (a non-empty message per error)."""
    result, _, _ = run_through_proxies(ddblocal_table, tmp_path, GOLDEN_EXPORT, "0", 11, write_rate=1.0,
                                       read_rate=0.0, write_faults=(THROTTLING,))
    assert result.returncode == 1, result.describe()
    report: dict[str, Any] | None = result.report
    assert report is not None
    assert report["errors"] and all(e["message"] for e in report["errors"])
    assert {e["image_id"] for e in report["errors"]} == set(list(GOLDEN_IDS))
    assert any("Throttling" in e["message"] for e in report["errors"])


def test_unprocessed_keys_on_reads_are_asked_for_again(ddblocal_table: TableHandle, tmp_path: Path) -> None:
    """A re-run compares every item with prod through BatchGetItem; when half the reads come
    back with UnprocessedKeys, the tool asks for those keys again: every item is found
    unchanged, nothing is written."""
    first = run_cli(live_args(ddblocal_table.name, ddblocal_table.url), report=tmp_path / "first.json")
    assert first.returncode == 0, first.describe()
    proxy = FaultProxy(ddblocal_table.url, seed=21, rate=0.5, faults=(PARTIAL_BATCH_GET,),
                       targets=("BatchGetItem",))
    try:
        again = run_cli(live_args(ddblocal_table.name, proxy.url, GOLDEN_EXPORT, "--no-skip-existing",
                                  "--max-retries", "10"), report=tmp_path / "again.json")
    finally:
        proxy.stop()
    assert again.returncode == 0, again.describe()
    assert proxy.injected.get(PARTIAL_BATCH_GET, 0) > 0, proxy.calls
    assert again.report is not None
    assert again.report["items"]["unchanged"] == len(EXPECTED)
    assert again.report["items"]["written"] == 0 and "BatchWriteItem" not in proxy.calls
    assert_table_equals(ddblocal_table.client, ddblocal_table.name, EXPECTED)
