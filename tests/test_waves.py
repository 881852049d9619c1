"""--wave-size: a big copy paced by the embedding pipeline (issue 9).

The Step Functions workflows really run, on a moto server of this module's own, and a test
thread plays the embedding pipeline: the harness is tests/waves.py (its docstring says how).
"""

from __future__ import annotations

import itertools
import json
import math
import os
import re
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

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


def machine_name(setup: Setup, kind: str) -> str:
    """The kind's state machine's name: what the CLI is given and what its messages say."""
    return setup.machines[kind].rsplit(":", 1)[1]


def wave_executions(wave: dict[str, Any]) -> list[dict[str, Any]]:
    """A reported wave's executions, round after round, in start order."""
    return [e for r in wave.get("rounds", []) for e in r["executions"]]


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
        # The pipeline embeds every NONE row of a kind per token: one round does the wave.
        [only] = w["rounds"]
        assert only["round"] == 1 and "waited_for" not in only, only
        assert [(e["workflow"], e["state_machine"], e["status"]) for e in only["executions"]] == [
            (machine_name(wave_setup, "line"), wave_setup.machines["line"], "SUCCEEDED"),
            (machine_name(wave_setup, "word"), wave_setup.machines["word"], "SUCCEEDED"),
        ]
        assert [e["arn"] for e in only["executions"]] == [line[k]["executionArn"], word[k]["executionArn"]]
        assert all(e["start"] and e["stop"] and NAME_RE.fullmatch(e["name"]) for e in only["executions"])
        # the wave's rows after its round: every line and word SUCCESS (the golden rows hold no noise)
        rows = sum(n for image_id, n in per_image.items() if image_id in w["image_ids"])
        assert only["rows"] == {"none": 0, "pending": 0, "done": rows, "noise": 0}, only["rows"]
        assert w["seconds_waited"]["executions"] > 0 and set(w["seconds_waited"]) <= set(tool.WAIT_CAUSES)
        # done after its copy and its waits (each rounded to the millisecond)
        assert w["seconds_to_done"] >= sum(w["seconds_waited"].values()) - 0.01, w
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
        bg.wait_for("Wave 1 of 1, round 1: waiting for the workflows' executions to end")
        bg.proc.send_signal(signal.SIGTERM)
        assert bg.wait(30) == 143, bg.output
    finally:
        bg.kill()
    running = [wave_setup.executions(k)[0] for k in ("line", "word")]
    arns = [e["executionArn"] for e in running]
    assert all(e["status"] == "RUNNING" for e in running), running
    assert f"stopped in wave 1 of 1 while {', '.join(arns)} kept running in AWS. " in bg.output, bg.output
    assert ("Nothing is lost: executions keep running in AWS, and re-running the same command first "
            "runs rounds for the 1 image already in prod whose rows are not done (wave 0) (copied "
            "images are skipped).") in bg.output, bg.output
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["interrupted"] is True and report["waves"][0]["outcome"] == "interrupted"
    assert [(e["arn"], e["status"]) for e in wave_executions(report["waves"][0])] == [
        (arn, "RUNNING") for arn in arns
    ]


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
        word = s.machines["word"].rsplit(":", 1)[1]
        assert (f"wave 1 of 2, round 1: the workflow {word} ended FAILED: {failed['executionArn']} "
                "(error 'EmbeddingFailed', cause 'the word batch did not compact')") in message, message
        assert "No further wave was copied" in message, message
        assert ("re-running the same command first runs rounds for the 5 images already in prod whose "
                "rows are not done (wave 0) and then copies the 5 images not yet copied, in waves") in message
        # Nothing of the second wave was written.
        assert s.image_ids_in_prod() == set(ids[:5])
        assert {pk for pk, _ in s.items()} == {f"IMAGE#{i}" for i in ids[:5]}
        assert len(report["waves"]) == 1 and report["waves"][0]["outcome"] == "workflow failed"
        [round1] = report["waves"][0]["rounds"]
        assert [e["status"] for e in round1["executions"]] == ["SUCCEEDED", "FAILED"]
        assert (round1["executions"][1]["error"], round1["executions"][1]["cause"]) == (
            "EmbeddingFailed", "the word batch did not compact")
        # The line workflow embedded the wave's lines; its words are left NONE.
        statuses = {(i["TYPE"]["S"], i["embedding_status"]["S"]) for i in s.items().values()
                    if i["TYPE"]["S"] in ("RECEIPT_LINE", "RECEIPT_WORD")}
        assert statuses == {("RECEIPT_LINE", "SUCCESS"), ("RECEIPT_WORD", "NONE")}, statuses
        # The second wave's images were found but not copied: counted, as interrupted.
        images = report["images"]
        assert images["total"] == 10 and images["copied"] == 5 and images["interrupted"] == 5

        # Fix the workflow; the same command continues with the other five images.
        s.sfn.update_state_machine(
            stateMachineArn=s.machines["word"], definition=callback_definition(s.queues["word"])
        )
        # It first finishes the failed wave's rows (wave 0: a round, no copy), then copies the rest.
        again, report = run(args, tmp_path / "r.json")
        assert again.returncode == 0, again.stdout + again.stderr
        assert "Wave 0: 5 images already in prod whose rows are not done" in again.stdout, again.stdout
        assert [(w["index"], w["image_ids"]) for w in report["waves"]] == [(0, ids[:5]), (1, ids[5:])]
        assert [w["outcome"] for w in report["waves"]] == ["done", "done"]
        wave0, wave1 = report["waves"]
        assert "images_copied" not in wave0 and wave1["images_copied"] == 5
        kinds = {t: sum(1 for (pk, _), i in expected.items() if pk[len("IMAGE#"):] in ids[:5]
                        and i["TYPE"]["S"] == t) for t in ("RECEIPT_LINE", "RECEIPT_WORD")}
        # chosen by NONE and PENDING only (SUCCESS rows are not read to choose: they are most)
        assert kinds["RECEIPT_LINE"] > 0
        assert wave0["rows_found"] == {"none": kinds["RECEIPT_WORD"], "pending": 0, "done": 0,
                                       "noise": 0}, wave0
        assert [len(w["rounds"]) for w in report["waves"]] == [1, 1]
        assert wave0["rounds"][0]["rows"]["none"] == wave1["rounds"][0]["rows"]["none"] == 0
        assert report["images"]["skipped_existing"] == 5 and report["images"]["copied"] == 5
        for kind in ("line", "word"):  # turn 1 (the first run's), 2 (wave 0), 3 (wave 1)
            check_names(s.executions(kind), kind, 3)
        assert [e["status"] for e in s.executions("word")] == ["FAILED", "SUCCEEDED", "SUCCEEDED"]
        # wave 0's word run embedded the first wave's words, wave 1's the second wave's
        actual, want = s.items(), embedded(expected)
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
                bg.wait_for("Wave 1 of 2, round 1: waiting for the workflows' executions to end")
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
        word = s.machines["word"].rsplit(":", 1)[1]
        assert f"wave 1 of 2, round 1: the workflow {word} ended {status}: {ended['executionArn']}" \
            in bg.output, bg.output
        assert "No further wave was copied" in bg.output, bg.output
        # Nothing of the second wave was written.
        assert s.image_ids_in_prod() == set(ids[:2])
        assert {pk for pk, _ in s.items()} == {f"IMAGE#{i}" for i in ids[:2]}
        assert len(s.executions("line")) == 1
        report = json.loads((tmp_path / "r.json").read_text())
        assert len(report["waves"]) == 1 and report["waves"][0]["outcome"] == "workflow failed"
        [round1] = report["waves"][0]["rounds"]
        assert [(e["arn"], e["status"]) for e in round1["executions"]] == [
            (s.executions("line")[0]["executionArn"], "SUCCEEDED"), (ended["executionArn"], status)]
        images = report["images"]
        assert images["total"] == 4 and images["copied"] == 2 and images["interrupted"] == 2, images
    finally:
        s.close()


def test_ctrl_c_while_waiting_then_rerun_waits_for_the_running_executions(
    wave_setup: Setup, tmp_path: Path
) -> None:
    """Ctrl-C while the first wave's executions run: they keep running. The re-run first
    finishes that wave's rows (wave 0), and its turns wait for the still-running executions,
    one workflow at a time, before it starts its own; then it copies the next wave."""
    ids, expected = make_export(tmp_path / "export", 4)
    args = wave_setup.args(tmp_path / "export", "--wave-size", 2, "--report", tmp_path / "r.json")
    line, word = machine_name(wave_setup, "line"), machine_name(wave_setup, "word")
    wave_setup.pipeline.hold.set()
    first = Background(args)
    try:
        first.wait_for("Wave 1 of 2, round 1: waiting for the workflows' executions to end")
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

    # The re-run finishes the first wave's rows before it copies anything: its line turn waits
    # for the held line execution, then (the line one let go) its word turn for the held word one.
    second = Background(args)
    try:
        second.wait_for(f"Wave 0 (images already in prod), round 1: waiting for the running execution(s) "
                        f"of {line} to end before starting ours (one at a time)")
        assert "Wave 0: 2 images already in prod whose rows are not done" in second.output, second.output
        assert wave_setup.image_ids_in_prod() == set(ids[:2])  # nothing of the next wave yet
        assert len(wave_setup.executions("line")) == len(wave_setup.executions("word")) == 1
        assert wave_setup.pipeline.release("line") == 1
        second.wait_for(f"Wave 0 (images already in prod), round 1: waiting for the running execution(s) "
                        f"of {word} to end before starting ours (one at a time)")
        assert [e["status"] for e in wave_setup.executions("line")] == ["SUCCEEDED", "RUNNING"]
        assert len(wave_setup.executions("word")) == 1
        assert wave_setup.image_ids_in_prod() == set(ids[:2])
        wave_setup.pipeline.hold.clear()
        assert second.wait(120) == 0, second.output
    finally:
        second.kill()
    runs = {kind: wave_setup.executions(kind) for kind in ("line", "word")}
    assert [e["executionArn"] for e in (runs["line"][0], runs["word"][0])] == [
        e["executionArn"] for e in held
    ]
    for kind in ("line", "word"):
        # turn 1 (held), 2 (wave 0), 3 (wave 1): never two of one workflow at a time
        check_names(runs[kind], kind, 3)
        assert all(e["status"] == "SUCCEEDED" for e in runs[kind]), runs[kind]
        for before, after in itertools.pairwise(runs[kind]):
            assert after["startDate"] >= before["stopDate"], (before, after)
    report = json.loads((tmp_path / "r.json").read_text())
    assert [(w["index"], w["image_ids"], w["outcome"]) for w in report["waves"]] == [
        (0, ids[:2], "done"), (1, ids[2:], "done")
    ]
    wave0, wave1 = report["waves"]
    assert wave0["rounds"][0]["waited_for"] == [e["executionArn"] for e in held]
    assert [e["arn"] for e in wave_executions(wave0)] == [runs["line"][1]["executionArn"],
                                                          runs["word"][1]["executionArn"]]
    assert wave0["seconds_waited"]["others"] > 0
    assert "waited_for" not in wave1["rounds"][0]  # wave 0's executions had ended
    assert [e["arn"] for e in wave_executions(wave1)] == [runs["line"][2]["executionArn"],
                                                          runs["word"][2]["executionArn"]]
    actual, want = wave_setup.items(), embedded(expected)
    assert set(actual) == set(want) and [k for k in want if actual[k] != want[k]] == []


def test_wave_timeout_exits_1_and_a_rerun_continues(wave_setup: Setup, tmp_path: Path) -> None:
    """The first wave's executions outlast --wave-timeout: exit 1, and the message says what a
    re-run does, which the re-run then does: wave 0 for the two copied images, then the third."""
    ids, _ = make_export(tmp_path / "export", 3)
    wave_setup.pipeline.hold.set()
    args = wave_setup.args(tmp_path / "export", "--wave-size", 2, "--wave-timeout", 1)
    proc, report = run(args, tmp_path / "r.json")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "wave 1 of 2, round 1: still waiting after" in proc.stderr and "--wave-timeout 1 s" in proc.stderr
    assert ("Nothing is lost: executions keep running in AWS, and re-running the same command first "
            "runs rounds for the 2 images already in prod whose rows are not done (wave 0) and then "
            "copies the 1 image not yet copied, in waves (copied images are skipped).") in proc.stderr
    assert report["waves"][0]["outcome"] == "timed out"
    assert sum(report["waves"][0]["seconds_waited"].values()) >= 1, report["waves"][0]
    assert wave_setup.image_ids_in_prod() == set(ids[:2])
    # The re-run (no --wave-timeout: 6 hours) finds the first wave's rows still NONE: wave 0.
    again = Background([*args[:-2], "--report", str(tmp_path / "r.json")])
    try:
        again.wait_for("Wave 0: 2 images already in prod whose rows are not done")
        wave_setup.pipeline.hold.clear()
        assert again.wait(120) == 0, again.output
    finally:
        again.kill()
    report = json.loads((tmp_path / "r.json").read_text())
    assert wave_setup.image_ids_in_prod() == set(ids)
    assert [(w["index"], w["image_ids"], w["outcome"]) for w in report["waves"]] == [
        (0, ids[:2], "done"), (1, ids[2:], "done")
    ]


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


def test_a_resynced_wave_that_writes_nothing_runs_rounds_when_its_rows_are_not_done(
    wave_setup: Setup, tmp_path: Path
) -> None:
    """--no-skip-existing: an image prod holds whole is in a wave that writes nothing, but its
    rows (copied by a plain run) are still NONE: the dry run plans the rounds the live run runs."""
    _, expected = make_export(tmp_path / "export", 1)
    proc, _ = run(wave_setup.args(tmp_path / "export"))  # plain copy: its lines/words stay NONE
    assert proc.returncode == 0, proc.stdout + proc.stderr
    args = wave_setup.args(tmp_path / "export", "--wave-size", 1, "--no-skip-existing")
    dry, plan = run([a for a in args if a not in ("--no-dry-run", "--yes")], tmp_path / "plan.json")
    assert dry.returncode == 0, dry.stdout + dry.stderr
    assert "wave 1 of 1: 1 image, nothing to write but its rows are not done; would run rounds of" \
        in dry.stdout
    assert [w["outcome"] for w in plan["waves"]] == ["planned"] and plan["waves"][0]["items_to_write"] == 0
    assert wave_setup.executions("line") == [] and wave_setup.executions("word") == []

    live, report = run(args, tmp_path / "r.json")
    assert live.returncode == 0, live.stdout + live.stderr
    [wave] = report["waves"]
    assert wave["index"] == 1 and wave["items_written"] == 0 and wave["outcome"] == "done"
    assert len(wave["rounds"]) == 1 and wave["rounds"][0]["rows"]["none"] == 0
    actual, want = wave_setup.items(), embedded(expected)
    assert set(actual) == set(want) and [k for k in want if actual[k] != want[k]] == []


def test_on_a_terminal_it_asks_and_shows_one_status_line_while_waiting(wave_setup: Setup,
                                                                       tmp_path: Path) -> None:
    """stdin, stdout and stderr a terminal: the confirmation says workflows will start, and while
    the workflows run one status line shows the wave, the round, the time waited and the wave's
    NONE/PENDING/done rows."""
    ids, expected = make_export(tmp_path / "export", 2)
    args = [a for a in wave_setup.args(tmp_path / "export", "--wave-size", 2)
            if a not in ("--yes", "--no-progress")]
    wave_setup.pipeline.hold.set()
    with Terminal(tool_command(args), env=env_for_subprocess(base={**os.environ, **POLL_ENV})) as term:
        term.wait_for_output("Type 'yes' to continue", timeout=120)
        term.type("yes\n")
        none = sum(none_items_per_image(expected).values())  # every line and word of the wave
        term.wait_for_output(f"this wave's rows NONE {none:,}, PENDING 0, done 0", timeout=120)
        wave_setup.pipeline.hold.clear()
        assert term.wait(120) == 0
    out = term.output
    line, word = machine_name(wave_setup, "line"), machine_name(wave_setup, "word")
    assert (f"in waves of 2 images: after each wave, rounds of the workflows {line}, {word} (input {{}}, "
            "one execution per workflow at a time) every 5m 00s until none of the wave's rows is NONE "
            "or PENDING any more") in out
    assert "\r\x1b[Kwave 1 of 1, round 1: waited 0m 0" in out  # rewritten in place, under the bars
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
    # Its rows embedded: the plan of its wave (nothing to write, rows done) cannot be changed
    # by the first wave's round, which embeds every NONE row of the table.
    wave_setup.pipeline.embed("line")
    wave_setup.pipeline.embed("word")

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
    assert [bool(p.get("would_start")) for p in planned] == [bool(d.get("rounds")) for d in done]
    for p, d in zip(planned, done):
        assert p["images_copied"] == d["images_copied"], (p, d)
        assert p["items_to_write"] == d["items_written"], (p, d)
    assert [len(d.get("rounds", [])) for d in done] == [1, 0, 1]
    assert [p["outcome"] for p in planned] == ["planned", "nothing to write", "planned"]
    # the re-synced image wrote nothing, and its rows were done: no round, and done
    assert [d["outcome"] for d in done] == ["done", "done", "done"]
    assert [d["items_written"] > 0 for d in done] == [True, False, True]
    for result in (plan, report):
        assert result["failed_images"] == [ids[4]], result["failed_images"]
        images = result["images"]
        assert (images["skipped_empty"], images["failed"], images["interrupted"]) == (1, 1, 0), images
    lines = [line for line in dry.stdout.splitlines() if line.startswith("  wave ")]
    assert ["(input {}) until the wave is done" in line for line in lines] == [True, False, True]
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
        assert "would run rounds of" not in proc.stdout and "nope" not in proc.stdout, proc.stdout
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
    """--trigger-embeddings alone takes one turn of each workflow: the executions are named by
    turn of their state machine, so a second trigger takes the next turn."""
    url = sfn_url
    sfn = make_service_client(url, "stepfunctions")
    definition = json.dumps({"StartAt": "Done", "States": {"Done": {"Type": "Pass", "End": True}}})
    suffix = uuid.uuid4().hex[:8]
    names = [f"{k}-{suffix}" for k in ("line", "word")]
    arns = [
        sfn.create_state_machine(name=name, definition=definition, roleArn=EMBEDDING_ROLE)["stateMachineArn"]
        for name in names
    ]
    command = [
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
    ]
    for turn in (1, 2):
        proc = subprocess.run(command, env=env_for_subprocess(), cwd=tmp_path, capture_output=True,
                              text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        for name, arn in zip(names, arns):
            # the Pass machine's execution ends at once: the second trigger has none running
            def ended(arn: str = arn) -> bool:
                executions = sfn.list_executions(stateMachineArn=arn)["executions"]
                return all(e["status"] != "RUNNING" for e in executions)

            wait_for(ended, timeout=30, what=f"the executions of {name} to end")
            executions = sfn.list_executions(stateMachineArn=arn)["executions"]
            assert sorted(e["name"] for e in executions) == [tool.turn_name(n) for n in range(1, turn + 1)]
            started = next(e for e in executions if e["name"] == tool.turn_name(turn))
            assert f"Started the embedding workflow {name}: {started['executionArn']}" in proc.stdout, \
                proc.stdout


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
