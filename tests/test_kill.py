"""SIGKILL a slowed-down live run at several points: every image whose IMAGE item exists must be
complete (the IMAGE-last invariant), and a re-run must finish the table exactly."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import pytest
from cli import kill_9, kill_if_running, live_args, run_cli, tool_command
from conftest import TableHandle
from fault_proxy import FaultProxy
from items import (
    GOLDEN_EXPORT,
    assert_table_equals,
    images_in_table,
    incomplete_marked_images,
    item_count,
    load_expected,
)
from servers import env_for_subprocess
from waiting import wait_for

EXPECTED = load_expected()
RATE = 100  # items per second: the golden copy (756 items) then takes ~8 s, time enough to kill it


def kill_when(table: TableHandle, threshold: int, tmp_path: Path) -> int:
    """Start a slowed live run; SIGKILL it once the table holds >= threshold items.
    Returns the item count once every request the run had sent has reached the engine (the
    run talks through a pass-through proxy, which knows when that is)."""
    proxy = FaultProxy(table.url, rate=0.0)
    args = live_args(table.name, proxy.url, GOLDEN_EXPORT, "--max-items-per-second", str(RATE),
                     "--max-workers", "2")
    log = (tmp_path / "run.log").open("w")
    proc = subprocess.Popen(tool_command(args), env=env_for_subprocess(),
                            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        # however slow the machine, the run either reaches the threshold or ends; the deadline
        # only turns a hang into a failure (the whole slowed copy takes ~8 s)
        wait_for(lambda: item_count(table.client, table.name) >= threshold, timeout=300, interval=0.02,
                 what=f"the table to hold {threshold} items",
                 give_up=lambda: None if proc.poll() is None else "the run ended before it could be killed",
                 details=lambda: (tmp_path / "run.log").read_text())
        assert proc.poll() is None, "the run ended before it could be killed"
        kill_9(proc)
        proxy.wait_idle()
    finally:
        kill_if_running(proc)
        log.close()
        proxy.stop()
    return item_count(table.client, table.name)


@pytest.mark.parametrize("fraction", [0.0, 0.3, 0.6, 0.9], ids=lambda f: f"at{int(f * 100)}pct")
def test_kill_keeps_image_last_invariant_and_rerun_completes(
    ddblocal_table: TableHandle, tmp_path: Path, fraction: float
) -> None:
    threshold = max(1, int(len(EXPECTED) * fraction))
    present = kill_when(ddblocal_table, threshold, tmp_path)
    assert threshold <= present < len(EXPECTED), f"kill did not land mid-run ({present} items)"
    assert incomplete_marked_images(ddblocal_table.client, ddblocal_table.name, EXPECTED) == [], \
        "an IMAGE item exists for an image that is not complete"
    complete_before = images_in_table(ddblocal_table.client, ddblocal_table.name)

    again = run_cli(live_args(ddblocal_table.name, ddblocal_table.url), report=tmp_path / "r.json")
    assert again.returncode == 0, again.describe()
    assert_table_equals(ddblocal_table.client, ddblocal_table.name, EXPECTED)
    report = again.report
    assert report is not None
    assert report["items"]["written"] == len(EXPECTED) - present
    assert report["images"]["skipped_existing"] == len(complete_before)


def test_repeated_kills_then_rerun(ddblocal_table: TableHandle, tmp_path: Path) -> None:
    """Kill, resume and kill again (the resumed run is interrupted too), then finish."""
    first = kill_when(ddblocal_table, len(EXPECTED) // 4, tmp_path)
    second = kill_when(ddblocal_table, first + len(EXPECTED) // 3, tmp_path)
    assert first < second < len(EXPECTED)
    assert incomplete_marked_images(ddblocal_table.client, ddblocal_table.name, EXPECTED) == []
    again = run_cli(live_args(ddblocal_table.name, ddblocal_table.url), report=tmp_path / "r.json")
    assert again.returncode == 0, again.describe()
    assert_table_equals(ddblocal_table.client, ddblocal_table.name, EXPECTED)


def test_ctrl_c_stops_cleanly_and_rerun_completes(ddblocal_table: TableHandle, tmp_path: Path) -> None:
    """SIGINT (Ctrl-C) mid-run: exit 130, nothing reported as an internal error or a failure,
    no IMAGE item for an incomplete image, the report is written; the next run finishes."""
    report = tmp_path / "interrupted.json"
    args = live_args(ddblocal_table.name, ddblocal_table.url, GOLDEN_EXPORT, "--max-items-per-second",
                     str(RATE), "--max-workers", "4", "--report", str(report))
    proc = subprocess.Popen(tool_command(args), env=env_for_subprocess(),
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        wait_for(lambda: item_count(ddblocal_table.client, ddblocal_table.name) >= len(EXPECTED) // 3,
                 timeout=300, interval=0.02, what=f"the table to hold {len(EXPECTED) // 3} items",
                 give_up=lambda: None if proc.poll() is None else "run ended too early")
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        kill_if_running(proc)
    assert proc.returncode == 130, stderr
    assert "internal error" not in stdout + stderr
    assert "Traceback" not in stderr
    data = json.loads(report.read_text(encoding="utf-8"))
    assert data["interrupted"] is True
    assert data["images"]["failed"] == 0 and data["errors"] == []
    assert incomplete_marked_images(ddblocal_table.client, ddblocal_table.name, EXPECTED) == []
    result = run_cli(live_args(ddblocal_table.name, ddblocal_table.url, GOLDEN_EXPORT))
    assert result.returncode == 0, result.describe()
    assert_table_equals(ddblocal_table.client, ddblocal_table.name, EXPECTED)
