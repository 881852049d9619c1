"""The smoke test the receipt system's CI runs: `pytest -m smoke` (well under a minute).

Starts a moto server on 127.0.0.1, creates the table as prod has it (GSI1-GSI4, GSITYPE,
stream), copies the bundled dev.export with the CLI (a subprocess, as an operator runs it),
checks every item of the table, and checks that running the same copy again writes nothing.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from cli import BUCKET_FLAGS, run_cli
from conftest import TableHandle
from items import DEV_EXPORT, GOLDEN_EXPECTED, assert_items_equal, load_expected, table_items

pytestmark = pytest.mark.smoke


def copy(table: TableHandle, report: Path) -> dict:
    proc = run_cli(["--no-dry-run", "--yes", "--table", table.name, "--endpoint-url", table.url,
                    "--export-dir", str(DEV_EXPORT), *BUCKET_FLAGS, "--no-progress"], report=report)
    assert proc.returncode == 0, proc.describe()
    assert "Traceback" not in proc.stderr
    assert proc.report is not None
    return proc.report


def test_smoke_copy_of_the_bundled_export(fresh_table: TableHandle, tmp_path: Path) -> None:
    exported = sorted(p.stem for p in DEV_EXPORT.glob("*.json"))
    expected = load_expected([i for i in exported if (GOLDEN_EXPECTED / f"{i}.jsonl").exists()])
    assert len(expected) == 284  # two images with receipts; the third has none and is skipped

    first = copy(fresh_table, tmp_path / "first.json")
    assert first["items"]["written"] == len(expected), first["items"]
    assert first["images"]["copied"] == 2 and first["images"]["failed"] == 0, first["images"]
    assert_items_equal(table_items(fresh_table.client, fresh_table.name), expected)

    again = copy(fresh_table, tmp_path / "again.json")
    assert again["items"].get("written", 0) == 0, again["items"]
    assert again["images"]["copied"] == 0 and again["images"]["skipped_existing"] == 2, again["images"]
    assert_items_equal(table_items(fresh_table.client, fresh_table.name), expected)
