"""Consumed capacity (issue 11.2), judged by DynamoDB Local's own accounting.

The report's ``capacity.write_units`` of a copy must equal what plain BatchWriteItem calls of
the same items cost on the same engine (written here into another fresh table with
``ReturnConsumedCapacity=TOTAL``); a dry run with a table reads (read units > 0) and writes
nothing (0 write units); the summary shows both numbers.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cli import live_args, run_cli
from conftest import TableHandle
from items import GOLDEN_EXPORT, first_keys, load_expected
from servers import LocalServer


def plain_write_units(table: TableHandle, items: list[dict[str, Any]]) -> float:
    """What writing ``items`` with plain BatchWriteItem calls costs on this engine."""
    units = 0.0
    for start in range(0, len(items), 25):
        pending: dict[str, Any] = {table.name: [{"PutRequest": {"Item": i}} for i in items[start:start + 25]]}
        while pending:
            response = table.client.batch_write_item(RequestItems=pending, ReturnConsumedCapacity="TOTAL")
            units += sum(c["CapacityUnits"] for c in response["ConsumedCapacity"])
            pending = response.get("UnprocessedItems") or {}
    return units


def summary_capacity(stdout: str) -> tuple[float, float]:
    match = re.search(r"^Capacity used:\s+([\d,.]+) write units, ([\d,.]+) read units$", stdout, re.M)
    assert match, f"no capacity line in the summary:\n{stdout}"
    return float(match[1].replace(",", "")), float(match[2].replace(",", ""))


def test_copy_reports_the_write_units_plain_writes_of_its_items_cost(
        ddblocal_server: LocalServer, table_factory: Callable[[LocalServer], TableHandle],
        tmp_path: Path) -> None:
    expected = list(load_expected().values())
    reference = table_factory(ddblocal_server)
    units = plain_write_units(reference, expected)
    assert units > len(expected), "every item also pays for its index writes"

    target = table_factory(ddblocal_server)
    result = run_cli(live_args(target.name, target.url), report=tmp_path / "r.json")
    assert result.returncode == 0 and result.report is not None, result.describe()
    capacity = result.report["capacity"]
    assert capacity["write_units"] == round(units, 1), (capacity, units)
    # (DynamoDB Local charges nothing for reading keys that are absent, as in this empty table)
    assert summary_capacity(result.stdout) == (capacity["write_units"], capacity["read_units"])

    # a re-run writes nothing and pays only for its reads
    again = run_cli(live_args(target.name, target.url, GOLDEN_EXPORT, "--no-skip-existing"),
                    report=tmp_path / "r2.json")
    assert again.returncode == 0 and again.report is not None, again.describe()
    assert again.report["items"]["written"] == 0
    assert again.report["capacity"]["write_units"] == 0
    assert again.report["capacity"]["read_units"] >= len(expected)  # a strongly consistent read each
    assert summary_capacity(again.stdout) == (0.0, again.report["capacity"]["read_units"])


def test_dry_run_with_a_table_reports_read_units_and_no_write_units(
        ddblocal_table: TableHandle, tmp_path: Path) -> None:
    # prod holds some of the items, as a stopped copy leaves them (each image's first item and
    # every other of the rest): every key is read, and reading them costs
    expected = load_expected()
    firsts = sorted(first_keys(expected).values())
    others = [k for k in sorted(expected) if k[1] != "IMAGE" and k not in firsts][::2]
    half = [expected[k] for k in firsts + others]
    plain_write_units(ddblocal_table, half)
    args = [a for a in live_args(ddblocal_table.name, ddblocal_table.url)
            if a not in ("--no-dry-run", "--yes")]
    result = run_cli(args, report=tmp_path / "dry.json")
    assert result.returncode == 0 and result.report is not None, result.describe()
    assert result.report["mode"] == "dry-run"
    capacity = result.report["capacity"]
    assert capacity["write_units"] == 0 and capacity["read_units"] >= len(half), capacity
    assert result.report["items"]["unchanged"] == len(half)
    assert summary_capacity(result.stdout) == (0.0, capacity["read_units"])
