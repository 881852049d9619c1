"""Every image accounted for (issue 11.3), the words after an interruption (13.3), and output
paths checked before anything is read or written (11.5), and outputs that fail during the run
(the copy's record is never lost for a file that cannot be written).

In every ending, copied + skipped_existing + skipped_empty + failed + not_reached_limit +
interrupted == total, and the counts are the table's truth: the images with an IMAGE item are
the copied ones, the interrupted ones are exactly the images left without one.

Interruptions are deterministic: the copy is slowed by ``--max-items-per-second`` and the
signal is sent only after the proxy saw the first writes, when most of the copy provably
remains (the rate bounds how much can have been written); the "everything had finished" case
stops the tool in a call it makes only after the copy (an endpoint that accepts and never
answers).
"""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from cli import (
    BUCKET_FLAGS,
    TOOL,
    kill_if_running,
    live_args,
    reads_items,
    run_cli,
    run_through,
    summary_counts,
)
from conftest import TableHandle
from exports import clone_export, copy_golden, fake_uuid, write_export
from fault_proxy import THROTTLING, FaultProxy
from items import (
    GOLDEN_IDS,
    IMG_LEGACY,
    IMG_VERBATIM,
    Item,
    Key,
    canonical_item,
    expected_for_clone,
    load_expected,
    put_items,
    table_values,
)
from servers import env_for_subprocess
from waiting import wait_for
from waves import Background, Setup

OUTCOMES = ("copied", "skipped_existing", "skipped_empty", "failed", "not_reached_limit", "interrupted")
RECEIPT_LISTS = ("receipts", "receipt_lines", "receipt_words", "receipt_letters",
                 "receipt_word_labels", "receipt_places", "receipt_metadatas", "receipt_barcodes")
EMPTY_ID = fake_uuid(1, "acc0")
BAD_ID = fake_uuid(2, "acc0")


def mixed_export(dst: Path) -> dict[Key, Item]:
    """The golden images, one without receipts and one that fails; returns the expected
    items of the images that can be copied."""
    copy_golden(dst)
    empty = clone_export(IMG_VERBATIM, EMPTY_ID)
    for name in RECEIPT_LISTS:
        empty[name] = []
    write_export(dst, empty, f"{EMPTY_ID}.json")
    bad = clone_export(IMG_LEGACY, BAD_ID)
    bad["receipt_words"][0]["word_id"] = "seven"
    write_export(dst, bad, f"{BAD_ID}.json")
    return dict(load_expected())


def assert_accounted(report: dict[str, Any], total: int) -> None:
    images = report["images"]
    assert images["total"] == total, images
    assert sum(images[k] for k in OUTCOMES) == total, images
    assert all(images[k] >= 0 for k in OUTCOMES), images


ITEM_LINES = {"to_write": "Items to write", "unchanged": "Items unchanged",
              "prod_progress_kept": "Items kept (prod's embedding progress)", "conflicts": "Conflicts",
              "failed_before_diff": "Items not decided (image failed first)",
              "interrupted_before_diff": "Items not decided (stopped first)"}


def assert_items_add_up(report: dict[str, Any], stdout: str) -> None:
    """Every planned item is in exactly one of the report's item counts and one summary line:
    decided (to write, unchanged, kept, a conflict prod keeps) or not decided (its image
    failed, or the run stopped, before its diff with prod)."""
    items = report["items"]
    assert sum(items.get(k, 0) for k in ITEM_LINES) == items["planned"], items
    counts = summary_counts(stdout)
    shown = {label: int(counts[label].split()[0].replace(",", "")) for label in
             ("Items planned", *ITEM_LINES.values()) if label in counts}
    assert sum(shown.get(label, 0) for label in ITEM_LINES.values()) == shown["Items planned"], shown
    assert all(shown.get(label, 0) == items.get(k, 0) for k, label in ITEM_LINES.items()), (shown, items)


def images_with_image_item(items: dict[Key, Item]) -> set[str]:
    return {pk[len("IMAGE#"):] for pk, sk in items if sk == "IMAGE"}


def assert_image_last(items: dict[Key, Item], expected: dict[Key, Item]) -> None:
    """Every image with its IMAGE item has every other item, exactly."""
    for image_id in images_with_image_item(items):
        wanted = {k: canonical_item(v) for k, v in expected.items() if k[0] == f"IMAGE#{image_id}"}
        assert {k: items.get(k) for k in wanted} == wanted, f"{image_id} marked complete but is not"


# --------------------------------------------------------------------------- endings without a signal


def test_normal_run_limit_and_failures_account_for_every_image(ddblocal_table: TableHandle,
                                                               tmp_path: Path) -> None:
    export = tmp_path / "export"
    expected = mixed_export(export)
    total = len(GOLDEN_IDS) + 2
    first = GOLDEN_IDS[0]
    put_items(ddblocal_table.client, ddblocal_table.name,
              [v for k, v in expected.items() if k[0] == f"IMAGE#{first}"])

    limited = run_cli(live_args(ddblocal_table.name, ddblocal_table.url, export, "--limit", "2"),
                      report=tmp_path / "limit.json")
    assert limited.report is not None, limited.describe()
    assert_accounted(limited.report, total)
    images = limited.report["images"]
    assert images["copied"] == 2 and images["skipped_existing"] == 1, images
    assert images["not_reached_limit"] > 0 and images["interrupted"] == 0, images
    copied = images_with_image_item(table_values(ddblocal_table.client, ddblocal_table.name)) - {first}
    assert copied == set(sorted(GOLDEN_IDS)[1:3])
    assert "Left for later (--limit)" in limited.stdout and "run the same command again" in limited.stdout

    # every write throttled, no retry: the images that reach the writes fail, the others keep
    # their outcome
    failing, _ = run_through(ddblocal_table, tmp_path, "--max-retries", "0", faults=[THROTTLING],
                             target="BatchWriteItem", name="fail", export=export)
    assert failing.returncode == 1 and failing.report is not None, failing.describe()
    assert_accounted(failing.report, total)
    images = failing.report["images"]
    assert images["skipped_existing"] == 3 and images["skipped_empty"] == 1, images
    assert images["failed"] == len(GOLDEN_IDS) - 3 + 1 and images["copied"] == 0, images
    assert images["interrupted"] == 0 and failing.report["interrupted"] is False, images
    assert_items_add_up(failing.report, failing.stdout)
    # prod's versions cannot be read (every key read throttled, no retry): the images fail
    # before their diff, and their items are counted as such
    unread, _ = run_through(ddblocal_table, tmp_path, "--max-retries", "0", faults=[THROTTLING],
                            target="BatchGetItem", only=reads_items, name="unread", export=export)
    assert unread.returncode == 1 and unread.report is not None, unread.describe()
    assert_items_add_up(unread.report, unread.stdout)
    assert unread.report["items"]["failed_before_diff"] == unread.report["items"]["planned"] > 0

    normal = run_cli(live_args(ddblocal_table.name, ddblocal_table.url, export, "--no-skip-existing"),
                     report=tmp_path / "normal.json")
    assert normal.returncode == 1 and normal.report is not None, normal.describe()
    assert_accounted(normal.report, total)
    images = normal.report["images"]
    assert images["failed"] == 1 and images["skipped_empty"] == 1 and images["interrupted"] == 0, images
    assert images["copied"] == len(GOLDEN_IDS) - 3 and images["skipped_existing"] == 3, images
    assert table_values(ddblocal_table.client, ddblocal_table.name) == \
        {k: canonical_item(v) for k, v in expected.items()}
    assert "Interrupted" not in normal.stdout and "stopped" not in normal.stderr
    # --no-skip-existing compared the images prod holds: not "skipped", nothing differed
    counts = summary_counts(normal.stdout)
    assert counts["Already in prod, nothing to write"] == "3" and "Skipped (already in prod)" not in counts
    assert summary_counts(limited.stdout)["Skipped (already in prod)"] == "1"
    # the summary's last lines (13.8): elapsed time and rate, and where the report is
    assert re.search(r"^Elapsed [\d,.]+ s, [\d,]+ items/s written$", normal.stdout, re.M), normal.stdout
    assert normal.stdout.rstrip().endswith(f"Report: {tmp_path / 'normal.json'}"), normal.stdout


# --------------------------------------------------------------------------- the summary's words (13.8)


def test_summary_of_a_run_that_copies_nothing_has_no_empty_sections(tmp_path: Path) -> None:
    """One image, without receipts, in a shard of one: nothing to copy. No empty "Entity
    counts:" header, one blank line between header and summary, no "1 images"/"1 files"."""
    export = tmp_path / "export"
    empty = clone_export(IMG_VERBATIM, EMPTY_ID)
    for name in RECEIPT_LISTS:
        empty[name] = []
    write_export(export, empty, f"{EMPTY_ID}.json")
    result = run_cli(["--export-dir", export, "--no-progress", "--shard", "0/1", "--limit", "1"],
                     report=tmp_path / "r.json")
    assert result.returncode == 0 and result.report is not None, result.describe()
    assert result.report["images"]["skipped_empty"] == 1
    assert "Entity counts" not in result.stdout
    assert "\n\n\n" not in result.stdout and not result.stdout.startswith("\n"), result.stdout
    assert "\n\nImages found:" in result.stdout, result.stdout
    assert not re.search(r"\b1 (images|files)\b", result.output), result.output
    assert re.search(r"^Elapsed [\d,.]+ s, [\d,]+ items/s planned$", result.stdout, re.M), result.stdout


# --------------------------------------------------------------------------- signals mid-copy


def start_tool(args: list[str]) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, str(TOOL), *args], env=env_for_subprocess(),
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def wait_until(condition: Any, proc: subprocess.Popen[str], what: str, timeout: float = 120) -> None:
    """Poll until ``condition()``; fail if the tool exits first. (The timeout only turns a hang
    into a failure; nothing depends on it.)"""

    def exited() -> str | None:
        return None if proc.poll() is None else f"the tool exited {proc.returncode}"

    try:
        wait_for(condition, timeout=timeout, interval=0.02, what=what, give_up=exited,
                 details=lambda: "\n".join(proc.communicate()) if proc.poll() is not None else "")
    except AssertionError:
        kill_if_running(proc)
        raise


RATE = 50  # items per second: the 756 golden items take >= 15 s; the signal comes after ~50


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)],
                         ids=["ctrl-c", "sigterm"])
def test_interrupted_copy_counts_every_image_and_a_rerun_finishes(
        ddblocal_table: TableHandle, tmp_path: Path, sig: signal.Signals, code: int) -> None:
    export = tmp_path / "export"
    expected = mixed_export(export)
    total = len(GOLDEN_IDS) + 2
    proxy = FaultProxy(ddblocal_table.url, rate=0.0)
    report_path = tmp_path / "stopped.json"
    args = live_args(ddblocal_table.name, proxy.url, export, "--report", str(report_path))
    try:
        proc = start_tool([*args, "--max-items-per-second", str(RATE), "--max-workers", "4"])
        wait_until(lambda: proxy.forwarded.get("BatchWriteItem", 0) >= 2, proc, "the first writes")
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=120)
        table = table_values(ddblocal_table.client, ddblocal_table.name)  # as the interrupted run left it
        # the same command (without the slowdown) finishes the interrupted images
        rerun = run_cli(args[:-2], report=tmp_path / "rerun.json")
    finally:
        proxy.stop()
    assert proc.returncode == code, f"exit {proc.returncode}\n{out}\n{err}"
    report = json.loads(report_path.read_text(encoding="utf-8"))
    assert report["interrupted"] is True
    assert_accounted(report, total)
    assert_items_add_up(report, out)
    images = report["images"]
    done = images_with_image_item(table)
    assert_image_last(table, expected)
    # the counts are the table's: copied images have their IMAGE item, the rest is interrupted
    assert images["copied"] == len(done), (images, done)
    assert images["failed"] == 1 and images["skipped_empty"] == 1, images
    left = set(GOLDEN_IDS) - done
    assert images["interrupted"] == len(left) >= 1, (images, left)
    # the words (13.3): how many, and that the same command finishes them
    n = images["interrupted"]
    assert "Interrupted (no IMAGE item yet):" in out and "re-run the same command to finish them" in out, out
    line = next(line for line in out.splitlines() if line.startswith("Interrupted"))
    assert line.partition(":")[2].split()[0] == f"{n:,}", line
    assert re.search(rf"^stopped: {n:,} images? not finished\b.*re-run the same command", err, re.M), err
    assert "Traceback" not in err

    # the re-run finished them, and the table is exact
    assert rerun.returncode == 1 and rerun.report is not None, rerun.describe()  # the bad image
    assert_accounted(rerun.report, total)
    assert rerun.report["images"]["copied"] == n
    assert rerun.report["images"]["skipped_existing"] == len(done)
    assert rerun.report["images"]["interrupted"] == 0
    assert table_values(ddblocal_table.client, ddblocal_table.name) == \
        {k: canonical_item(v) for k, v in expected.items()}


MANY = 60  # images, ~9,000 items: more than the copy holds in flight (5,000), so the walk through
# the images waits for writes to settle, and at RATE_MANY most images are not even started when
# the signal comes after the first write
RATE_MANY = 100
OUTCOME_LINES = ("Copied", "Skipped (already in prod)", "Skipped (no receipts)", "Failed",
                 "Interrupted (no IMAGE item yet)", "Left for later (--limit)")


def many_images(dst: Path, count: int = MANY) -> dict[Key, Item]:
    """``count`` golden images cloned under new ids; returns their expected items."""
    expected: dict[Key, Item] = {}
    for n in range(count):
        source, new_id = GOLDEN_IDS[n % len(GOLDEN_IDS)], fake_uuid(n, "5e1f")
        write_export(dst, clone_export(source, new_id))
        expected.update(expected_for_clone(source, new_id))
    return expected


def assert_every_image_counted(report: dict[str, Any], out: str, err: str, expected: dict[Key, Item],
                               done: set[str]) -> None:
    """A run stopped while most images were not started: the report's and the summary's images
    add up to every image of the selection, the unstarted ones counted as interrupted."""
    total = len({pk for pk, _ in expected})
    assert report["interrupted"] is True
    # the precondition: images were left unstarted (their items never planned)
    assert report["items"]["planned"] < len(expected), report["items"]
    assert_accounted(report, total)
    images = report["images"]
    assert images["copied"] == len(done), (images, done)
    assert images["interrupted"] == total - len(done) > 0, images
    counts = summary_counts(out)
    assert counts["Images found"] == f"{total:,}", out
    shown = [int(counts[label].split()[0].replace(",", "")) for label in OUTCOME_LINES if label in counts]
    assert sum(shown) == total, out
    assert counts["Interrupted (no IMAGE item yet)"].split()[0] == f"{total - len(done):,}", out
    assert re.search(rf"^stopped: {total - len(done):,} images? not finished\b", err, re.M), err
    assert "Traceback" not in err


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)],
                         ids=["ctrl-c", "sigterm"])
def test_images_not_yet_started_when_stopped_are_counted(
        ddblocal_table: TableHandle, tmp_path: Path, sig: signal.Signals, code: int) -> None:
    """Stopped after the first write of a copy of many images, most of them not yet read: those
    are found images too, counted as interrupted in the report and the summary."""
    export = tmp_path / "export"
    expected = many_images(export)
    proxy = FaultProxy(ddblocal_table.url, rate=0.0)
    report_path = tmp_path / "stopped.json"
    args = live_args(ddblocal_table.name, proxy.url, export, "--report", str(report_path),
                     "--max-items-per-second", str(RATE_MANY), "--max-workers", "2")
    try:
        proc = start_tool(args)
        wait_until(lambda: proxy.forwarded.get("BatchWriteItem", 0) >= 1, proc, "the first write")
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=120)
    finally:
        proxy.stop()
        kill_if_running(proc)
    assert proc.returncode == code, f"exit {proc.returncode}\n{out}\n{err}"
    report = json.loads(report_path.read_text(encoding="utf-8"))
    table = table_values(ddblocal_table.client, ddblocal_table.name)
    assert_image_last(table, expected)
    assert_every_image_counted(report, out, err, expected, images_with_image_item(table))
    assert_items_add_up(report, out)


def test_images_of_a_wave_not_yet_started_when_stopped_are_counted(wave_setup: Setup,
                                                                   tmp_path: Path) -> None:
    """The same with --wave-size: stopped (SIGTERM) during the first wave's copy, the images the
    wave had not started and those of the wave after it are counted as interrupted; no workflow
    was started."""
    export = tmp_path / "export"
    expected = many_images(export)
    proxy = FaultProxy(wave_setup.table.url, rate=0.0)
    report_path = tmp_path / "stopped.json"
    args = wave_setup.args(export, "--wave-size", 40, "--max-items-per-second", RATE_MANY,
                           "--max-workers", 2, "--report", report_path)
    args[args.index("--endpoint-url") + 1] = proxy.url
    try:
        bg = Background(args)  # stdout and stderr together
        try:
            wait_until(lambda: proxy.forwarded.get("BatchWriteItem", 0) >= 1, bg.proc, "the first write")
            bg.proc.send_signal(signal.SIGTERM)
            code = bg.wait(120)
        finally:
            bg.kill()
    finally:
        proxy.stop()
    assert code == 143, bg.output
    report = json.loads(report_path.read_text(encoding="utf-8"))
    table = table_values(wave_setup.table.client, wave_setup.table.name)
    assert_image_last(table, expected)
    assert_every_image_counted(report, bg.output, bg.output, expected, images_with_image_item(table))
    assert report["wave_plan"]["waves"] == 2 and len(report["waves"]) == 1, report["waves"]
    assert wave_setup.executions("line") == wave_setup.executions("word") == []


def test_interruption_after_every_image_finished_says_nothing_is_left(
        ddblocal_table: TableHandle, tmp_path: Path) -> None:
    """Ctrl-C while the run does its last step after the copy (here: starting the embedding
    workflows at an endpoint that never answers): no claim of unfinished work."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    listener.settimeout(120)
    sfn_url = f"http://127.0.0.1:{listener.getsockname()[1]}"
    report_path = tmp_path / "r.json"
    arn = "arn:aws:states:us-east-1:123456789012:stateMachine:{}"
    args = live_args(ddblocal_table.name, ddblocal_table.url, copy_golden(tmp_path / "export")[0].parent,
                     "--trigger-embeddings", "--sfn-endpoint-url", sfn_url,
                     "--line-state-machine", arn.format("line"), "--word-state-machine", arn.format("word"),
                     "--report", str(report_path))
    proc = start_tool(args)
    try:
        conn, _ = listener.accept()  # the copy is over: the tool now calls Step Functions
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
        conn.close()
    finally:
        listener.close()
        kill_if_running(proc)
    assert proc.returncode == 130, f"{out}\n{err}"
    report = json.loads(report_path.read_text(encoding="utf-8"))
    assert_accounted(report, len(GOLDEN_IDS))
    assert report["images"]["copied"] == len(GOLDEN_IDS) and report["images"]["interrupted"] == 0
    assert "Interrupted" not in out
    assert "not finished" not in err and "nothing is left to do" in err, err
    assert table_values(ddblocal_table.client, ddblocal_table.name) == \
        {k: canonical_item(v) for k, v in load_expected().items()}


# --------------------------------------------------------------------------- output paths (11.5)


def unwritable_paths(tmp_path: Path) -> dict[str, Path]:
    regular = tmp_path / "a-file"
    regular.write_text("x")
    (tmp_path / "a-dir").mkdir()
    return {"directory": tmp_path / "a-dir", "missing parent": tmp_path / "no-such-dir" / "out.json",
            "under a regular file": regular / "out.json"}


@pytest.mark.parametrize("flag", ["--report", "--dump-items"])
@pytest.mark.parametrize("case", ["directory", "missing parent", "under a regular file"])
@pytest.mark.parametrize("mode", ["live", "dry run with a table"])
def test_unwritable_output_path_is_exit_2_before_anything_is_touched(
        ddblocal_table: TableHandle, tmp_path: Path, flag: str, case: str, mode: str) -> None:
    path = unwritable_paths(tmp_path)[case]
    proxy = FaultProxy(ddblocal_table.url, rate=0.0)
    export = copy_golden(tmp_path / "export")[0].parent
    args = live_args(ddblocal_table.name, proxy.url, export, flag, str(path))
    if mode != "live":
        args = [a for a in args if a not in ("--no-dry-run", "--yes")]
    try:
        result = run_cli(args)
    finally:
        proxy.stop()
    assert result.returncode == 2, result.describe()
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and flag in lines[0] and str(path) in lines[0], result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == "", result.stdout  # no header: nothing was started
    assert proxy.calls == {}, f"the table was contacted: {proxy.calls}"
    assert table_values(ddblocal_table.client, ddblocal_table.name) == \
        {}
    assert not (path.exists() and path.is_file()), "the unwritable path was created"


def no_table_dry_run(export: Path, *extra: Any) -> list[Any]:
    return ["--export-dir", export, *BUCKET_FLAGS, "--no-progress", *extra]


@pytest.mark.parametrize("case", ["report in the export dir", "dump over an export file",
                                  "report and dump the same file", "dump over --source-items"])
def test_output_path_over_an_input_or_the_other_output_is_exit_2(tmp_path: Path, case: str) -> None:
    """Nothing is read, written or truncated: the inputs are byte for byte as they were."""
    export = copy_golden(tmp_path / "export")[0].parent
    items = tmp_path / "items.jsonl"
    items.write_text("")
    export_file = export / f"{GOLDEN_IDS[0]}.json"
    args = {
        "report in the export dir": no_table_dry_run(export, "--report", export / "report.json"),
        "dump over an export file": no_table_dry_run(export, "--dump-items", export_file),
        "report and dump the same file": no_table_dry_run(
            export, "--report", tmp_path / "out", "--dump-items", tmp_path / "." / "out"),
        "dump over --source-items": ["--source-items", items, *BUCKET_FLAGS, "--dump-items", items],
    }[case]
    before = {p: p.read_bytes() for p in [*export.iterdir(), items]}
    result = run_cli(args)
    assert result.returncode == 2, result.describe()
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert result.stdout == "", result.stdout
    assert {p: p.read_bytes() for p in [*export.iterdir(), items]} == before
    assert not (tmp_path / "out").exists()


needs_dev_full = pytest.mark.skipif(not Path("/dev/full").exists(), reason="no /dev/full (a full disk)")


@needs_dev_full
def test_report_that_cannot_be_written_still_prints_the_summary(
        ddblocal_table: TableHandle, tmp_path: Path) -> None:
    """/dev/full passes the checks up front (it exists and is writable) and fails on write,
    as a disk that filled up during the copy does. The copy itself is complete."""
    export = copy_golden(tmp_path / "export")[0].parent
    result = run_cli(live_args(ddblocal_table.name, ddblocal_table.url, export, "--report", "/dev/full"))
    assert result.returncode == 1, result.describe()
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: --report /dev/full: cannot write: "), result.stderr
    assert summary_counts(result.stdout)["Copied"] == str(len(GOLDEN_IDS)), result.stdout
    assert "Report: /dev/full (NOT written)" in result.stdout
    assert table_values(ddblocal_table.client, ddblocal_table.name) == \
        {k: canonical_item(v) for k, v in load_expected().items()}


@needs_dev_full
@pytest.mark.parametrize("mode", ["live", "dry run"])
def test_dump_that_cannot_be_written_stops_the_run_and_fails_no_image(
        ddblocal_table: TableHandle, tmp_path: Path, mode: str) -> None:
    """The first failed write of --dump-items stops the run before its next image: no image
    is failed for it (its items are in prod), every image is accounted for, the summary and
    the report are written, and the error says why, once."""
    # More items than the copy holds in flight (5,000): the walk must wait for writes to
    # settle, so the first failed dump write is seen before the last image is started.
    export, total = tmp_path / "export", 60
    for n in range(total):
        new_id = fake_uuid(n, "d0")
        write_export(export, clone_export(GOLDEN_IDS[n % len(GOLDEN_IDS)], new_id), f"{new_id}.json")
    report_path = tmp_path / "report.json"
    if mode == "live":
        args = live_args(ddblocal_table.name, ddblocal_table.url, export, "--dump-items", "/dev/full",
                         "--max-workers", "2")
    else:
        args = no_table_dry_run(export, "--dump-items", "/dev/full")
    result = run_cli(args, report=report_path)
    assert result.returncode == 1, result.describe()
    assert "Traceback" not in result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and errors[0].startswith("error: --dump-items /dev/full: cannot write: "), \
        result.stderr
    assert "internal error" not in result.output
    report = json.loads(report_path.read_text(encoding="utf-8"))
    assert_accounted(report, total)
    assert report["images"]["failed"] == 0 and report["images"]["interrupted"] > 0, report["images"]
    assert "Images found" in result.stdout  # the summary
    if mode == "live":  # images with an IMAGE item are the copied ones, complete
        items = table_values(ddblocal_table.client, ddblocal_table.name)
        assert len(images_with_image_item(items)) == report["images"]["copied"]
