"""--wave-size: a big copy paced by the embedding pipeline (issue 9).

The Step Functions workflows really run, on a moto server of this module's own, and a test
thread plays the embedding pipeline: the harness is tests/waves.py (its docstring says how).
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from cli import Terminal, tool_command
from conftest import TableHandle
from exports import clone_export, fake_uuid, mutate, write_export
from items import GOLDEN_IDS
from servers import EMBEDDING_ROLE, REGION, env_for_subprocess, make_service_client
from waiting import wait_for
from waves import (
    FAIL_DEFINITION,
    NAME_RE,
    POLL_ENV,
    Background,
    Setup,
    callback_definition,
    check_names,
    embedded,
    make_export,
    none_items_per_image,
    run,
    wait_definition,
)

import copy_dynamodb_dev_to_prod as tool

TOOL = Path(tool.__file__)


# --------------------------------------------------------------------------- tests


def test_twenty_images_in_waves_of_five(wave_setup: Setup, tmp_path: Path) -> None:
    """The "done when" scenario: paced by a pipeline that really runs, table exact afterwards."""
    ids, expected = make_export(tmp_path / "export", 20)
    proc, report = run(
        wave_setup.args(tmp_path / "export", "--wave-size", 5, "--trigger-embeddings"), tmp_path / "r.json"
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr

    for kind in ("line", "word"):
        runs = wave_setup.executions(kind)
        assert len(runs) == 4 and all(e["status"] == "SUCCEEDED" for e in runs), runs
        check_names(runs, kind, 4)
    # Each wave's workflows started only after the previous wave's had ended.
    line, word = wave_setup.executions("line"), wave_setup.executions("word")
    for k in range(1, 4):
        assert min(line[k]["startDate"], word[k]["startDate"]) >= max(
            line[k - 1]["stopDate"], word[k - 1]["stopDate"]
        )

    per_image = none_items_per_image(expected)
    bound = sum(sorted(per_image.values(), reverse=True)[:5])
    assert wave_setup.pipeline.samples > 10
    assert 0 < wave_setup.pipeline.max_none <= bound, (wave_setup.pipeline.max_none, bound)

    actual = wave_setup.items()
    want = embedded(expected)
    assert set(actual) == set(want)
    assert [k for k in want if actual[k] != want[k]] == []

    waves = report["waves"]
    assert [w["index"] for w in waves] == [1, 2, 3, 4]
    assert [w["image_ids"] for w in waves] == [ids[i : i + 5] for i in range(0, 20, 5)]
    assert sum(w["items_written"] for w in waves) == len(expected) == report["items"]["written"]
    for w, k in zip(waves, range(4)):
        assert w["images"] == w["images_copied"] == 5 and w["outcome"] == "done"
        assert w["items_written"] == sum(1 for pk, _ in expected if pk[len("IMAGE#") :] in w["image_ids"])
        assert [(e["kind"], e["status"]) for e in w["executions"]] == [
            ("line", "SUCCEEDED"),
            ("word", "SUCCEEDED"),
        ]
        assert {e["arn"] for e in w["executions"]} == {line[k]["executionArn"], word[k]["executionArn"]}
        assert all(e["start"] and e["stop"] and NAME_RE.fullmatch(e["name"]) for e in w["executions"])
        assert w["none_at_end"] == {"lines": 0, "words": 0}
        assert w["seconds_waited"] > 0
    assert report["images"]["copied"] == 20 and report["images"]["total"] == 20
    assert sum(line.startswith("  wave ") for line in proc.stdout.splitlines()) == 4


def test_waves_count_is_ceil_and_rerun_copies_nothing(wave_setup: Setup, tmp_path: Path) -> None:
    """7 images in waves of 3: 3 executions per workflow; a re-run has no wave and starts nothing."""
    make_export(tmp_path / "export", 7)
    proc, report = run(wave_setup.args(tmp_path / "export", "--wave-size", 3), tmp_path / "r.json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert [w["images"] for w in report["waves"]] == [3, 3, 1]
    for kind in ("line", "word"):
        check_names(wave_setup.executions(kind), kind, math.ceil(7 / 3))

    again, report = run(wave_setup.args(tmp_path / "export", "--wave-size", 3), tmp_path / "r.json")
    assert again.returncode == 0, again.stdout + again.stderr
    assert report["waves"] == [] and report["images"]["skipped_existing"] == 7
    assert len(wave_setup.executions("line")) == len(wave_setup.executions("word")) == 3


def test_limit_applies_before_the_waves_and_names_stay_unique_across_runs(
    wave_setup: Setup, tmp_path: Path
) -> None:
    ids, _ = make_export(tmp_path / "export", 5)
    proc, report = run(wave_setup.args(tmp_path / "export", "--wave-size", 2, "--limit", 3),
                       tmp_path / "r.json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert [w["image_ids"] for w in report["waves"]] == [ids[:2], ids[2:3]]
    assert report["images"]["not_reached_limit"] == 2 and report["images"]["total"] == 5
    assert "Left for later (--limit)" in proc.stdout

    again, report = run(wave_setup.args(tmp_path / "export", "--wave-size", 2), tmp_path / "r.json")
    assert again.returncode == 0, again.stdout + again.stderr
    assert [w["image_ids"] for w in report["waves"]] == [ids[3:]]
    assert report["images"]["skipped_existing"] == 3 and wave_setup.image_ids_in_prod() == set(ids)
    for kind in ("line", "word"):
        names = [e["name"] for e in wave_setup.executions(kind)]
        assert len(names) == 3 == len(set(names)) and all(NAME_RE.fullmatch(n) for n in names)


def test_sigterm_while_waiting_exits_143_and_says_the_executions_keep_running(
    wave_setup: Setup, tmp_path: Path
) -> None:
    make_export(tmp_path / "export", 1)
    wave_setup.pipeline.hold.set()
    bg = Background(wave_setup.args(tmp_path / "export", "--wave-size", 1, "--report", tmp_path / "r.json"))
    try:
        bg.wait_for("waiting for the line and word workflows to end")
        bg.proc.send_signal(signal.SIGTERM)
        assert bg.wait(30) == 143, bg.output
    finally:
        bg.kill()
    running = [wave_setup.executions(k)[0] for k in ("line", "word")]
    assert all(e["status"] == "RUNNING" and e["executionArn"] in bg.output for e in running)
    assert "keep running in AWS" in bg.output and "Re-running the same command continues" in bg.output
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["interrupted"] is True and report["waves"][0]["outcome"] == "interrupted"


def test_failing_word_workflow_stops_the_run_and_a_rerun_finishes(
    fresh_table: TableHandle, sfn_url: str, tmp_path: Path
) -> None:
    s = Setup(fresh_table, sfn_url, word_definition=FAIL_DEFINITION)
    try:
        ids, expected = make_export(tmp_path / "export", 10)
        args = s.args(tmp_path / "export", "--wave-size", 5, "--trigger-embeddings")
        proc, report = run(args, tmp_path / "r.json")
        assert proc.returncode == 1, proc.stdout + proc.stderr
        [failed] = s.executions("word")
        assert failed["status"] == "FAILED"
        message = proc.stderr
        assert failed["executionArn"] in message and "FAILED" in message
        assert "EmbeddingFailed" in message and "the word batch did not compact" in message
        assert "re-run the same command" in message
        # Nothing of the second wave was written.
        assert s.image_ids_in_prod() == set(ids[:5])
        assert {pk for pk, _ in s.items()} == {f"IMAGE#{i}" for i in ids[:5]}
        assert len(report["waves"]) == 1 and report["waves"][0]["outcome"] == "workflow failed"
        assert [e["status"] for e in report["waves"][0]["executions"]] == ["SUCCEEDED", "FAILED"]
        assert report["waves"][0]["none_at_end"]["words"] > 0
        # The second wave's images were found but not copied: counted, as interrupted.
        images = report["images"]
        assert images["total"] == 10 and images["copied"] == 5 and images["interrupted"] == 5

        # Fix the workflow; the same command continues with the other five images.
        s.sfn.update_state_machine(
            stateMachineArn=s.machines["word"], definition=callback_definition(s.queues["word"])
        )
        again, report = run(args, tmp_path / "r.json")
        assert again.returncode == 0, again.stdout + again.stderr
        assert [w["image_ids"] for w in report["waves"]] == [ids[5:]]
        assert report["images"]["skipped_existing"] == 5 and report["images"]["copied"] == 5
        actual, want = s.items(), embedded(expected)  # the second word run embedded both waves' words
        assert set(actual) == set(want) and [k for k in want if actual[k] != want[k]] == []
    finally:
        s.close()


@pytest.mark.parametrize("status", ["ABORTED", "TIMED_OUT"])
def test_a_workflow_ended_aborted_or_timed_out_stops_the_run(
    fresh_table: TableHandle, sfn_url: str, tmp_path: Path, status: str
) -> None:
    """Only SUCCEEDED lets the next wave go: a word workflow someone stopped (ABORTED, stopped
    here by the test while the tool waits) or that ran out of its TimeoutSeconds (TIMED_OUT)
    stops the run like a FAILED one: exit 1, the status named, no further wave copied."""
    definition = wait_definition(3600, timeout_seconds=1 if status == "TIMED_OUT" else None)
    s = Setup(fresh_table, sfn_url, word_definition=definition)
    try:
        ids, _ = make_export(tmp_path / "export", 4)
        # --wave-timeout only bounds a run that (wrongly) goes on to wait for a second wave
        args = s.args(tmp_path / "export", "--wave-size", 2, "--wave-timeout", 120,
                      "--report", tmp_path / "r.json")
        bg = Background(args)
        try:
            if status == "ABORTED":
                bg.wait_for("waiting for the line and word workflows to end")
                [running] = s.executions("word")
                s.sfn.stop_execution(executionArn=running["executionArn"], error="Stopped",
                                     cause="stopped by the operator")
            code = bg.wait(300)
        finally:
            bg.kill()
        assert code == 1, bg.output
        words = s.executions("word")
        assert len(words) == 1, f"a second wave's workflow was started:\n{bg.output}"
        ended = words[0]
        assert ended["status"] == status, ended
        assert f"the word embedding workflow ended {status}: {ended['executionArn']}" in bg.output, bg.output
        assert "No further wave was copied" in bg.output, bg.output
        # Nothing of the second wave was written.
        assert s.image_ids_in_prod() == set(ids[:2])
        assert {pk for pk, _ in s.items()} == {f"IMAGE#{i}" for i in ids[:2]}
        assert len(s.executions("line")) == 1
        report = json.loads((tmp_path / "r.json").read_text())
        assert len(report["waves"]) == 1 and report["waves"][0]["outcome"] == "workflow failed"
        assert [e["status"] for e in report["waves"][0]["executions"]] == ["SUCCEEDED", status]
        images = report["images"]
        assert images["total"] == 4 and images["copied"] == 2 and images["interrupted"] == 2, images
    finally:
        s.close()


def test_ctrl_c_while_waiting_then_rerun_waits_for_the_running_executions(
    wave_setup: Setup, tmp_path: Path
) -> None:
    ids, expected = make_export(tmp_path / "export", 4)
    args = wave_setup.args(tmp_path / "export", "--wave-size", 2, "--report", tmp_path / "r.json")
    wave_setup.pipeline.hold.set()
    first = Background(args)
    try:
        first.wait_for("waiting for the line and word workflows to end")
        assert len(wave_setup.executions("line")) == len(wave_setup.executions("word")) == 1
        first.proc.send_signal(signal.SIGINT)
        assert first.wait(30) == 130, first.output
    finally:
        first.kill()
    assert "keep running in AWS" in first.output
    held = [wave_setup.executions(k)[0] for k in ("line", "word")]
    assert all(e["status"] == "RUNNING" and e["executionArn"] in first.output for e in held)
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["interrupted"] is True and report["waves"][0]["outcome"] == "interrupted"
    assert wave_setup.image_ids_in_prod() == set(ids[:2])

    # The re-run copies the next wave, then waits for the still-running executions before its own.
    second = Background(args)
    try:
        second.wait_for("waiting for execution(s) already running")
        assert wave_setup.image_ids_in_prod() == set(ids)
        assert len(wave_setup.executions("line")) == len(wave_setup.executions("word")) == 1
        wave_setup.pipeline.hold.clear()
        assert second.wait(120) == 0, second.output
    finally:
        second.kill()
    runs = {kind: wave_setup.executions(kind) for kind in ("line", "word")}
    assert [e["executionArn"] for e in (runs["line"][0], runs["word"][0])] == [
        e["executionArn"] for e in held
    ]
    held_ended = max(runs["line"][0]["stopDate"], runs["word"][0]["stopDate"])
    for kind in ("line", "word"):
        assert len(runs[kind]) == 2 and all(e["status"] == "SUCCEEDED" for e in runs[kind])
        assert runs[kind][1]["startDate"] >= held_ended
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["waves"][0]["waited_for_running"] == [e["executionArn"] for e in held]
    actual, want = wave_setup.items(), embedded(expected)
    assert set(actual) == set(want) and [k for k in want if actual[k] != want[k]] == []


def test_wave_timeout_exits_1_and_a_rerun_continues(wave_setup: Setup, tmp_path: Path) -> None:
    ids, _ = make_export(tmp_path / "export", 3)
    wave_setup.pipeline.hold.set()
    args = wave_setup.args(tmp_path / "export", "--wave-size", 2, "--wave-timeout", 1)
    proc, report = run(args, tmp_path / "r.json")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "--wave-timeout 1 s" in proc.stderr and "re-running the same command continues" in proc.stderr
    assert report["waves"][0]["outcome"] == "timed out" and report["waves"][0]["seconds_waited"] >= 1
    assert wave_setup.image_ids_in_prod() == set(ids[:2])
    wave_setup.pipeline.hold.clear()
    again, report = run(args[:-2], tmp_path / "r.json")
    assert again.returncode == 0, again.stdout + again.stderr
    assert wave_setup.image_ids_in_prod() == set(ids)
    assert [w["image_ids"] for w in report["waves"]] == [ids[2:]]


def test_backlog_gate_waits_for_the_none_count(wave_setup: Setup, tmp_path: Path) -> None:
    """--max-pending-embeddings: the first wave waits until the table's NONE count is low enough."""
    make_export(tmp_path / "old", 1)
    proc, _ = run(wave_setup.args(tmp_path / "old"))  # plain copy: its lines/words stay NONE
    assert proc.returncode == 0, proc.stdout + proc.stderr
    backlog = wave_setup.pipeline.none_count()
    assert backlog > 0
    ids, _ = make_export(tmp_path / "export", 2)
    bg = Background(
        wave_setup.args(tmp_path / "export", "--wave-size", 2, "--max-pending-embeddings", backlog - 1)
    )
    try:
        bg.wait_for("--max-pending-embeddings")
        assert wave_setup.image_ids_in_prod().isdisjoint(ids)
        wave_setup.pipeline.embed("line")  # the pipeline catches up
        assert bg.wait(120) == 0, bg.output
    finally:
        bg.kill()
    assert set(ids) <= wave_setup.image_ids_in_prod()


def test_on_a_terminal_it_asks_and_shows_one_status_line_while_waiting(wave_setup: Setup,
                                                                       tmp_path: Path) -> None:
    """stdin, stdout and stderr a terminal: the confirmation says workflows will start, and while
    the workflows run one status line shows the wave, the time waited and its NONE records."""
    ids, expected = make_export(tmp_path / "export", 2)
    args = [a for a in wave_setup.args(tmp_path / "export", "--wave-size", 2)
            if a not in ("--yes", "--no-progress")]
    wave_setup.pipeline.hold.set()
    with Terminal(tool_command(args), env=env_for_subprocess(base={**os.environ, **POLL_ENV})) as term:
        term.wait_for_output("Type 'yes' to continue", timeout=120)
        term.type("yes\n")
        none = sum(none_items_per_image(expected).values())
        lines = sum(1 for k, i in expected.items() if i["TYPE"]["S"] == "RECEIPT_LINE")
        term.wait_for_output(f"this wave still NONE: {lines:,} lines, {none - lines:,} words", timeout=120)
        wave_setup.pipeline.hold.clear()
        assert term.wait(120) == 0
    out = term.output
    assert "in waves of 2 images: after each wave that wrote something the line and word workflows" in out
    assert "\r\x1b[Kwave 1 of 1: waited 0m 0" in out  # rewritten in place, under the bars
    assert wave_setup.image_ids_in_prod() == set(ids)


def test_dry_run_prints_the_plan_and_starts_nothing(wave_setup: Setup, tmp_path: Path) -> None:
    make_export(tmp_path / "export", 5)
    args = [a for a in wave_setup.args(tmp_path / "export", "--wave-size", 2) if a != "--no-dry-run"]
    proc, report = run(args, tmp_path / "r.json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    plan = [line for line in proc.stdout.splitlines() if line.startswith("  wave ")]
    assert len(plan) == 3 and "Waves of up to 2 images: 3 of 3 planned" in proc.stdout
    assert [w["images"] for w in report["waves"]] == [2, 2, 1]
    assert sum(w["items_to_write"] for w in report["waves"]) == report["items"]["to_write"]
    for line, w in zip(plan, report["waves"]):
        assert (
            f"{w['images']} image{'s' if w['images'] > 1 else ''}, {w['items_to_write']:,} items to write"
            in line
        )
        assert (
            wave_setup.machines["line"].rsplit(":", 1)[1] in line
            and wave_setup.machines["word"].rsplit(":", 1)[1] in line
        )
    assert wave_setup.executions("line") == wave_setup.executions("word") == []
    assert wave_setup.items() == {}


def test_dry_run_plan_is_what_the_live_run_does_wave_by_wave(wave_setup: Setup, tmp_path: Path) -> None:
    """Five images: one to copy, one without receipts, one already in prod unchanged
    (--no-skip-existing), one to copy, one that fails. The run plan decides each once: the
    waves (of one image) are the three it copies or re-syncs; the empty and the failing image
    are outcomes of the plan, in no wave, and everything else goes on. The dry run says, wave
    by wave, what the live run then does: workflows only after a wave that writes something."""
    export = tmp_path / "export"
    ids = [fake_uuid(n, str(n)) for n in range(1, 6)]
    for image_id, source in zip(ids, GOLDEN_IDS):
        write_export(export, clone_export(source, image_id))
    mutate(export / f"{ids[1]}.json", lambda d: d.update({k: [] for k in d if k.startswith("receipt")}))
    mutate(export / f"{ids[4]}.json", lambda d: d["receipt_words"][0].update(confidence=1.5))
    pre, _ = run(wave_setup.args(export, "--image-id", ids[2]))
    assert pre.returncode == 0, pre.stdout + pre.stderr

    args = wave_setup.args(export, "--wave-size", 1, "--no-skip-existing")
    dry, plan = run([a for a in args if a != "--no-dry-run"], tmp_path / "plan.json")
    assert dry.returncode == 1, dry.stdout + dry.stderr  # the failed image
    assert wave_setup.executions("line") == wave_setup.executions("word") == []
    live, report = run(args, tmp_path / "live.json")
    assert live.returncode == 1, live.stdout + live.stderr

    planned, done = plan["waves"], report["waves"]
    waved = [[ids[0]], [ids[2]], [ids[3]]]
    assert [w["image_ids"] for w in planned] == waved == [w["image_ids"] for w in done]
    assert plan["wave_plan"]["waves"] == report["wave_plan"]["waves"] == 3
    assert [bool(p.get("would_start")) for p in planned] == [bool(d.get("executions")) for d in done]
    for p, d in zip(planned, done):
        assert p["images_copied"] == d["images_copied"], (p, d)
        assert p["items_to_write"] == d["items_written"], (p, d)
    assert [bool(d.get("executions")) for d in done] == [True, False, True]
    assert [d["outcome"] for d in done] == ["done", "nothing written", "done"]
    for result in (plan, report):
        assert result["failed_images"] == [ids[4]], result["failed_images"]
        images = result["images"]
        assert (images["skipped_empty"], images["failed"], images["interrupted"]) == (1, 1, 0), images
    lines = [line for line in dry.stdout.splitlines() if line.startswith("  wave ")]
    assert ["with input {}" in line for line in lines] == [True, False, True]
    assert "nothing to write: would start no workflows" in lines[1]
    assert all(e["status"] == "SUCCEEDED" for k in ("line", "word") for e in wave_setup.executions(k))
    assert len(wave_setup.executions("line")) == len(wave_setup.executions("word")) == 2
    assert wave_setup.image_ids_in_prod() == {ids[0], ids[2], ids[3]}


@pytest.mark.parametrize("waves", [False, True], ids=["straight", "waves"])
def test_limit_counts_only_images_the_plan_copies(wave_setup: Setup, tmp_path: Path, waves: bool) -> None:
    """One rule for --limit, with waves or without: an image without receipts and a failing
    one are not copies, so `--limit 1` still copies one image (it copied none, forever, with
    --wave-size when the first image was empty)."""
    export = tmp_path / "export"
    ids = [fake_uuid(n, "1a") for n in range(1, 5)]
    for image_id, source in zip(ids, GOLDEN_IDS * 2):
        write_export(export, clone_export(source, image_id))
    mutate(export / f"{ids[0]}.json", lambda d: d.update({k: [] for k in d if k.startswith("receipt")}))
    mutate(export / f"{ids[1]}.json", lambda d: d["receipt_words"][0].update(confidence=1.5))
    extra = ["--wave-size", 1] if waves else []
    proc, report = run(wave_setup.args(export, "--limit", 1, *extra), tmp_path / "r.json")
    assert proc.returncode == 1, proc.stdout + proc.stderr  # the failing image
    assert wave_setup.image_ids_in_prod() == {ids[2]}
    images = report["images"]
    assert (images["copied"], images["skipped_empty"], images["failed"], images["not_reached_limit"],
            images["interrupted"], images["total"]) == (1, 1, 1, 1, 0, 4), images
    if waves:
        assert [w["image_ids"] for w in report["waves"]] == [[ids[2]]]


def test_a_run_failing_before_its_first_wave_counts_every_planned_image(
    wave_setup: Setup, tmp_path: Path
) -> None:
    """A state machine that does not exist stops the live run before anything is copied, and
    the dry run (which reads prod) resolves the names as the live run does and fails the same
    way. Either way every planned image is counted: none was copied, none is "done"."""
    make_export(tmp_path / "export", 4)
    args = [a if a != wave_setup.machines["word"].rsplit(":", 1)[1] else "nope"
            for a in wave_setup.args(tmp_path / "export", "--wave-size", 2)]
    for dry in (True, False):
        proc, report = run([a for a in args if a != "--no-dry-run"] if dry else args, tmp_path / "r.json")
        assert proc.returncode == 1, proc.stdout + proc.stderr
        assert "state machine 'nope' not found" in proc.stderr, proc.stderr
        assert "would start nope" not in proc.stdout
        assert re.search(r"^Images found:\s+4$", proc.stdout, re.M), proc.stdout
        assert report["images"]["total"] == 4 and report["images"]["copied"] == 0, report["images"]
        assert report["images"]["interrupted"] == 4 and report["wave_plan"]["images"] == 4
        assert "nothing is left to do" not in proc.stdout + proc.stderr
    assert wave_setup.items() == {}


def test_a_wave_stopped_mid_copy_counts_what_it_wrote(wave_setup: Setup, tmp_path: Path) -> None:
    """SIGTERM while the first wave is being copied: the wave's numbers are its own tally's,
    so what it says it wrote is what the run wrote (it said 0 while the report said 375)."""
    make_export(tmp_path / "export", 3)
    bg = Background(wave_setup.args(tmp_path / "export", "--wave-size", 3, "--max-workers", 1,
                                    "--max-items-per-second", 60, "--report", tmp_path / "r.json"))
    try:
        wait_for(wave_setup.items, timeout=120, what="the first items of the wave in the table",
                 give_up=lambda: None if bg.proc.poll() is None else f"the tool exited:\n{bg.output}")
        bg.proc.send_signal(signal.SIGTERM)
        assert bg.wait(60) == 143, bg.output
    finally:
        bg.kill()
    report = json.loads((tmp_path / "r.json").read_text())
    [wave] = report["waves"]
    written = len(wave_setup.items())
    assert 0 < wave["items_written"] == report["items"]["written"] == written, (wave, report["items"])
    assert report["images"]["total"] == 3 and report["images"]["interrupted"] >= 1, report["images"]
    assert wave_setup.executions("line") == []


def test_single_trigger_names_its_executions(sfn_url: str, tmp_path: Path) -> None:
    url = sfn_url
    sfn = make_service_client(url, "stepfunctions")
    definition = json.dumps({"StartAt": "Done", "States": {"Done": {"Type": "Pass", "End": True}}})
    suffix = uuid.uuid4().hex[:8]
    arns = [
        sfn.create_state_machine(name=f"{k}-{suffix}", definition=definition,
                                 roleArn=EMBEDDING_ROLE)["stateMachineArn"]
        for k in ("line", "word")
    ]
    proc = subprocess.run(
        [
            sys.executable,
            str(TOOL),
            "--trigger-embeddings",
            "--no-dry-run",
            "--yes",
            "--endpoint-url",
            url,
            "--region",
            REGION,
            "--line-state-machine",
            arns[0],
            "--word-state-machine",
            arns[1],
        ],
        env=env_for_subprocess(),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    for kind, arn in zip(("line", "word"), arns):
        [e] = sfn.list_executions(stateMachineArn=arn)["executions"]
        assert re.fullmatch(r"copy-dev-to-prod-\d{8}T\d{6}Z-[0-9a-f]{4}-" + kind, e["name"]), e["name"]


@pytest.mark.parametrize(
    "flags",
    [
        ["--wave-size", "0"],
        ["--max-pending-embeddings", "5"],
        ["--wave-timeout", "10"],
        ["--wave-size", "2", "--wave-timeout", "0"],
        ["--wave-size", "2", "--status"],
    ],
)
def test_wave_flag_errors_are_usage_errors(flags: list[str], tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(TOOL), *flags, "--table", "t"],
        env=env_for_subprocess(),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    # the message names the wave flag the user typed (not one implied by it)
    wave_flags = {"--wave-size", "--max-pending-embeddings", "--wave-timeout"}
    assert any(flag in lines[0] for flag in flags if flag in wave_flags), lines[0]


# --------------------------------------------------------------------------- in process


def test_polls_back_off_to_thirty_seconds_and_the_timeout_is_exact() -> None:
    """The waiting loop with an injected clock: no real time passes."""
    now = [0.0]
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        now[0] += seconds

    waiter = tool.Waiter(600, clock=lambda: now[0], sleep=sleep, poll=(tool.POLL_FIRST, tool.POLL_MAX))
    wave = tool.Wave(1, 2, [])
    with pytest.raises(tool.FatalError, match="--wave-timeout 600 s"):
        waiter.wait(wave, "executions", lambda: (False, "line RUNNING"), start="waiting", advice=lambda: "-")
    # 3 s, growing by half each time up to 30 s; the last one is cut to what the timeout leaves
    # (every number here is exact in binary floating point: no tolerance needed)
    growing = [3.0, 4.5, 6.75, 10.125, 15.1875, 22.78125]
    assert sleeps == [*growing, *[30.0] * 17, 600 - sum(growing) - 17 * 30.0], sleeps
    assert 2 <= sleeps[0] <= 5 and max(sleeps) == 30  # a few seconds, growing to 30
    assert sleeps[:-1] == sorted(sleeps[:-1])
    assert sum(sleeps) == 600 and wave.waited == {"executions": 600}
    assert wave.outcome == "timed out"

    # A probe that succeeds on its third call: two sleeps, then back without error; a later wait
    # of the same wave, for another cause, shares its budget (the wave has waited 90 s of 100).
    answers = iter([False, False, True])
    sleeps.clear()
    wave = tool.Wave(2, 2, [], waited={"queues": 90.0})
    waiter.timeout = 100
    waiter.wait(wave, "others", lambda: (next(answers), ""), start="waiting", advice=lambda: "-")
    assert sleeps == [3.0, 4.5] and wave.waited == {"queues": 90.0, "others": 7.5}
    sleeps.clear()
    with pytest.raises(tool.FatalError):
        waiter.wait(wave, "round_interval", lambda: (False, ""), start="waiting", advice=lambda: "-")
    assert sleeps == [2.5] and wave.waited_total() == 100


def test_execution_names_are_turns_of_their_state_machine() -> None:
    """The tool's executions are named by turn; a prefix resolves only when it is unique."""
    assert tool.turn_name(42) == "copy-dev-to-prod-000042"
    assert tool.TURN_RE.fullmatch(tool.turn_name(1234567))
    machines = {"line-submit-sf-prod-1a2b": "arn:1", "line-submit-sf-dev-9f9f": "arn:2",
                "word-submit-sf-prod-3c4d": "arn:3"}
    assert tool.resolve_machine("line-submit-sf-prod-", machines) == "arn:1"
    assert tool.resolve_machine("word-submit-sf-prod-3c4d", machines) == "arn:3"
    with pytest.raises(tool.FatalError, match="line-submit-sf-dev-9f9f, line-submit-sf-prod-1a2b"):
        tool.resolve_machine("line-submit-sf-", machines)
    with pytest.raises(tool.FatalError, match="not found"):
        tool.resolve_machine("ingest", machines)


def test_summary_counts_a_wave_stopped_before_its_copy_as_not_run() -> None:
    """--max-pending-embeddings: a wave whose backlog wait ended the run copied nothing, so it
    is not among the waves run, and its images are among those not run."""
    plan = {"wave_size": 5, "waves": 2, "images": 10, "dry_run": False, "wave_done": "embedded"}
    waiting = {"index": 1, "images": 5, "outcome": "timed out", "seconds_waited": {"backlog": 3.0}}
    assert tool.wave_summary_lines(plan, [waiting])[0] == \
        "Waves of up to 5 images: 0 of 2 run (10 images in the waves not run); a wave is done " \
        "when none of its rows is NONE or PENDING"
    copied = {"index": 1, "images": 5, "images_copied": 5, "items_written": 90, "outcome": "done"}
    assert tool.wave_summary_lines(plan, [copied])[0].startswith(
        "Waves of up to 5 images: 1 of 2 run (5 images in the waves not run);")
