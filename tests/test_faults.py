"""Live runs through the fault-injecting proxy: throttling, 5xx before/after the write, partial
batches, dropped connections. The table must end exactly right, or (when everything fails)
hold no IMAGE item for an incomplete image."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from conftest import TableHandle
from fault_proxy import (
    DEFAULT_FAULTS,
    DEFAULT_TARGETS,
    DROP_AFTER,
    ERROR_AFTER,
    ERROR_BEFORE,
    PARTIAL_BATCH,
    PROVISIONED_THROUGHPUT,
    THROTTLING,
    FaultProxy,
)
from live_helpers import (
    GOLDEN_EXPORT,
    CliResult,
    RecordingProxy,
    assert_table_equals,
    check_write_requests,
    expected_by_image_of,
    golden_image_ids,
    image_items_present,
    incomplete_marked_images,
    live_args,
    load_expected,
    multiplied_export,
    run_cli,
    table_items,
)
from servers import item_key

EXPECTED = load_expected()


def proxy_chain(table: TableHandle, seed: int, write_rate: float, read_rate: float,
                write_faults: tuple[str, ...] = DEFAULT_FAULTS) -> tuple[RecordingProxy, FaultProxy]:
    """CLI -> writes proxy (faults on BatchWriteItem, records requests) -> reads proxy (throttling
    on Query/BatchGetItem) -> moto."""
    reads = FaultProxy(table.url, seed=seed + 1000, rate=read_rate,
                       faults=(THROTTLING, PROVISIONED_THROUGHPUT), targets=("Query", "BatchGetItem"))
    writes = RecordingProxy(reads.url, seed=seed, rate=write_rate, faults=write_faults,
                            targets=("BatchWriteItem",))
    return writes, reads

def run_through_proxies(table: TableHandle, tmp_path: Path, export_dir: Path, max_retries: str,
                        seed: int, **chain: Any) -> tuple[CliResult, RecordingProxy, FaultProxy]:
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
def big_export(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, Any]]]:
    """The golden export 4 times over (20 images, ~130 BatchWriteItem calls), so that at 30%
    every fault kind is drawn many times."""
    return multiplied_export(tmp_path_factory.mktemp("big"), 4)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_disturbed_run_ends_exact(fresh_table: TableHandle, tmp_path: Path, seed: int,
                                  big_export: tuple[Path, list[dict[str, Any]]]) -> None:
    export_dir, expected = big_export
    result, writes, reads = run_through_proxies(fresh_table, tmp_path, export_dir, "8", seed,
                                                write_rate=0.3, read_rate=0.15)
    assert result.returncode == 0, result.describe()
    print(f"run took {result.seconds:.1f}s, injected {writes.injected}, reads {reads.injected}")
    assert result.seconds < 120, f"took {result.seconds:.0f}s"
    assert_table_equals(fresh_table.client, fresh_table.name, expected)

    report = result.report
    assert report is not None
    assert report["images"]["failed"] == 0 and report["failed_images"] == []
    assert report["images"]["copied"] == len(expected_by_image_of(expected))
    assert report["items"]["written"] + report["items"]["unchanged"] == len(expected)
    assert report["items"]["written"] == len(table_items(fresh_table.client, fresh_table.name))

    injected = writes.injected
    for fault in DEFAULT_FAULTS:
        assert injected.get(fault, 0) > 0, f"fault {fault} never injected: {injected}"
    assert reads.injected.get(THROTTLING, 0) > 0 or reads.injected.get(PROVISIONED_THROUGHPUT, 0) > 0
    assert reads.total_injected() > 0, f"reads never throttled: {reads.calls}"
    assert {op for op, _ in writes.events} == {"BatchWriteItem"}
    assert check_write_requests(writes.batch_writes()) == []


@pytest.mark.parametrize("seed", [4, 5])
def test_every_write_failing_marks_no_image_complete(fresh_table: TableHandle, tmp_path: Path,
                                                     seed: int) -> None:
    result, writes, _ = run_through_proxies(
        fresh_table, tmp_path, GOLDEN_EXPORT, "1", seed, write_rate=1.0, read_rate=0.0,
        write_faults=(ERROR_BEFORE, ERROR_AFTER, PARTIAL_BATCH, DROP_AFTER))
    assert result.returncode == 1, result.describe()
    assert result.seconds < 120
    report = result.report
    assert report is not None
    assert sorted(report["failed_images"]) == golden_image_ids()
    assert report["images"]["failed"] == len(golden_image_ids())
    assert report["images"]["copied"] == 0
    assert image_items_present(fresh_table.client, fresh_table.name) == set()
    assert incomplete_marked_images(fresh_table.client, fresh_table.name) == []
    # error_after / drop_after / partial_batch applied some writes: the report must not claim more
    assert report["items"]["written"] <= len(table_items(fresh_table.client, fresh_table.name))
    assert check_write_requests(writes.batch_writes()) == []


def test_every_call_failing_reports_every_image_failed(fresh_table: TableHandle, tmp_path: Path) -> None:
    """Reads fail too (the prod check cannot even start): exit 1, nothing written, and the report
    must not read as a clean run of 0 images. DescribeTable is spared: when it fails too, the
    table check before the copy stops the run with one line (tests/test_operator.py)."""
    proxy = FaultProxy(fresh_table.url, seed=7, rate=1.0, faults=(THROTTLING, ERROR_BEFORE),
                       targets=DEFAULT_TARGETS)
    try:
        result = run_cli(live_args(fresh_table.name, proxy.url, GOLDEN_EXPORT, "--max-retries", "1"),
                         report=tmp_path / "r.json", timeout=170)
    finally:
        proxy.stop()
    assert result.returncode == 1, result.describe()
    assert result.seconds < 120
    assert table_items(fresh_table.client, fresh_table.name) == {}
    report = result.report
    assert report is not None, "a failed run must still write its report"
    assert sorted(report["failed_images"]) == golden_image_ids(), report
    assert report["images"]["failed"] == len(golden_image_ids())


def test_max_retries_counts_retries_not_extra_ones(fresh_table: TableHandle, tmp_path: Path) -> None:
    """--max-retries N: every request is sent at most N + 1 times; with N = 0 each batch is
    sent exactly once: every item but the IMAGE items (never reached) in exactly one request."""
    result, writes, _ = run_through_proxies(fresh_table, tmp_path, GOLDEN_EXPORT, "0", 9, write_rate=1.0,
                                            read_rate=0.0, write_faults=(ERROR_BEFORE,))
    assert result.returncode == 1, result.describe()
    sent = Counter(item_key(i) for batch in writes.batch_writes() for i in batch)
    assert [k for k, n in sent.items() if n > 1] == [], "items sent twice with --max-retries 0"
    assert set(sent) == {item_key(i) for i in EXPECTED if i["SK"]["S"] != "IMAGE"}
    assert table_items(fresh_table.client, fresh_table.name) == {}


def test_report_of_faulty_run_lists_reasons(fresh_table: TableHandle, tmp_path: Path) -> None:
    """Each failed image's report entry says why (a non-empty message per error)."""
    result, _, _ = run_through_proxies(fresh_table, tmp_path, GOLDEN_EXPORT, "0", 11, write_rate=1.0,
                                       read_rate=0.0, write_faults=(THROTTLING,))
    assert result.returncode == 1, result.describe()
    report: dict[str, Any] | None = result.report
    assert report is not None
    assert report["errors"] and all(e["message"] for e in report["errors"])
    assert {e["image_id"] for e in report["errors"]} == set(golden_image_ids())
    assert any("Throttling" in e["message"] for e in report["errors"])
