"""Waves paced by what the embedding pipeline has finished, read from the table (issue 20).

The receipt system as it runs today: four workflows (a submit and an ingest state machine per
kind, Pulumi-named with a random suffix), a submit claiming a few receipts (NONE -> PENDING,
noise rows skipped), an ingest finishing only rows claimed some time before (PENDING ->
SUCCESS), and the compaction queues the operator gates on. The table is on DynamoDB Local, the
workflows really run on the module's moto server, and a test thread plays the pipeline: the
harness is tests/pipeline.py (its docstring says how). Every test judges what ends up in the
table and in Step Functions.
"""

from __future__ import annotations

import itertools
import re
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import TableHandle
from items import IMG_PLACE_EMPTY_ID, IMG_ROUNDING, IMG_VERBATIM, put_items
from pipeline import (
    EXECUTION_NAME_RE,
    ROLES,
    Cutoff,
    Export,
    Finished,
    PipelineSetup,
    ToolRun,
    execution_numbers,
    ids_for_shards,
    make_export,
    run_tool,
    shard_of,
)

ROUND_INTERVAL = ("--round-interval", "0.5")
WAVE_TIMEOUT = ("--wave-timeout", "180")  # a run that hangs fails instead of holding up the module
#: One receipt each: small, quick images.
SMALL_SOURCES = ("6e9d7077-dca1-484f-82f0-1b582c61cbec", "b35feee1-1cd5-4fb2-8a41-a5236695a69c",
                 "efa03cb2-a232-4c58-979f-d56028dab399")


@pytest.fixture
def make_setup(ddblocal_table: TableHandle, sfn_url: str) -> Iterator[Callable[..., PipelineSetup]]:
    """``make(**PipelineSetup kwargs)``: the four workflows, their player and the gate queues on
    the test's DynamoDB Local table; closed (held executions released) after the test."""
    made: list[PipelineSetup] = []

    def make(**kwargs: Any) -> PipelineSetup:
        setup = PipelineSetup(ddblocal_table, sfn_url, **kwargs)
        made.append(setup)
        return setup

    yield make
    for setup in made:
        setup.close()


# --------------------------------------------------------------------------- checks


def assert_embedded(setup: PipelineSetup, export: Export) -> None:
    """Every non-noise line and word of the export SUCCESS, every noise row still NONE."""
    states = setup.states(export.row_keys())
    summary = {status: len(keys) for status, keys in states.items()}
    assert set(states) <= {"SUCCESS", "NONE"}, summary
    assert states.get("SUCCESS", set()) == export.embeddable(), summary
    assert states.get("NONE", set()) == export.noise_of(), summary


def rows_done(export: Export, image_ids: list[str]) -> dict[str, int]:
    """A done wave's row counts as the report gives them."""
    return {"none": 0, "pending": 0, "done": export.non_noise(image_ids),
            "noise": len(export.noise_of(image_ids))}


def check_rounds(setup: PipelineSetup, wave: dict[str, Any], workflows: list[str]) -> None:
    """Each round of a wave started the four workflows in the order given, and each ended
    SUCCEEDED; the report's executions are Step Functions' own."""
    assert wave["rounds"], wave
    for k, r in enumerate(wave["rounds"], 1):
        assert r["round"] == k, wave["rounds"]
        executions = r["executions"]
        assert [e["workflow"] for e in executions] == workflows, executions
        assert [e["state_machine"] for e in executions] == [setup.machines[role] for role in ROLES]
        for e in executions:
            assert e["status"] == "SUCCEEDED" and e["start"] and e["stop"], e
            assert EXECUTION_NAME_RE.fullmatch(e["name"]), e["name"]
            assert e["arn"].endswith(f":{e['name']}"), e


def reported_arns(report: dict[str, Any]) -> set[str]:
    return {e["arn"] for w in report["waves"] for r in w["rounds"] for e in r["executions"]}


def all_arns(runs: dict[str, list[dict[str, Any]]]) -> set[str]:
    return {e["executionArn"] for ones in runs.values() for e in ones}


def depth_of(depths: dict[str, int], queue: str) -> int:
    """A queue's depth in a gate record (keyed by the name or the URL given)."""
    [value] = [n for k, n in depths.items() if k == queue or k.endswith(f"/{queue}")]
    return value


# --------------------------------------------------------------------------- done when


def test_twenty_images_in_waves_of_five_each_done_when_its_rows_are(
    make_setup: Callable[..., PipelineSetup], tmp_path: Path
) -> None:
    """The issue's "done when": an export no test has seen (20 fresh clones with noise rows), waves
    of 5, four workflows, a pipeline that claims 2 receipts per submit and finishes only what it
    claimed at least 1 s before. Each wave takes several rounds; the rows in flight never exceed
    what one wave holds; no two executions of one state machine overlap."""
    setup = make_setup(claim_receipts=2, ingest_delay=1.0)
    export = make_export(tmp_path / "export", 20)
    result = run_tool(setup.args(export.path, "--wave-size", 5, *ROUND_INTERVAL, "--wave-timeout", 300),
                      tmp_path / "r.json", timeout=480)
    assert result.code == 0, result.describe()

    # The table: every item written, every non-noise line and word embedded, noise left NONE.
    assert set(setup.items()) == set(export.expected)
    assert_embedded(setup, export)

    report = result.report
    assert report is not None
    waves = report["waves"]
    assert [w["index"] for w in waves] == [1, 2, 3, 4]
    assert [w["image_ids"] for w in waves] == [export.ids[i : i + 5] for i in range(0, 20, 5)]
    plan = report["wave_plan"]
    assert (plan["wave_size"], plan["waves"], plan["images"], plan["dry_run"]) == (5, 4, 20, False), plan

    # Rows in flight (non-noise NONE + PENDING, table-wide), sampled all along.
    bound = max(export.non_noise(w["image_ids"]) for w in waves)
    assert setup.player.samples > 50, setup.player.samples
    assert 0 < setup.player.max_in_flight <= bound, (setup.player.max_in_flight, bound)

    for w in waves:
        assert w["images"] == 5 and w["outcome"] == "done", w
        check_rounds(setup, w, setup.workflows())
        assert w["rounds"][-1]["rows"] == rows_done(export, w["image_ids"]), w["rounds"][-1]
        assert all(r["rows"]["none"] + r["rows"]["pending"] > 0 for r in w["rounds"][:-1]), w["rounds"]
        assert isinstance(w["seconds_waited"], dict) and w["seconds_to_done"] > 0, w
    assert any(len(w["rounds"]) > 1 for w in waves), [len(w["rounds"]) for w in waves]

    # Step Functions: one execution per machine and round, named by turn, input {}, never two at
    # once; the four of a round in the order given, each round after the previous one ended.
    runs = setup.no_overlaps()
    rounds = sum(len(w["rounds"]) for w in waves)
    for role in ROLES:
        assert execution_numbers(runs[role]) == list(range(1, rounds + 1)), role
        assert all(e["status"] == "SUCCEEDED" and e["input"] == "{}" for e in runs[role])
    assert reported_arns(report) == all_arns(runs)
    turns = [[runs[role][t] for role in ROLES] for t in range(rounds)]
    for turn in turns:
        starts = [e["startDate"] for e in turn]
        assert starts == sorted(starts), [e["name"] for e in turn]
    for before, after in itertools.pairwise(turns):
        assert min(e["startDate"] for e in after) >= max(e["stopDate"] for e in before)
    # Within a wave, the next round waits --round-interval after the previous one ended.
    first = 0
    for w in waves:
        for t in range(first, first + len(w["rounds"]) - 1):
            gap = min(e["startDate"] for e in turns[t + 1]) - max(e["stopDate"] for e in turns[t])
            assert gap.total_seconds() >= 0.45, (w["index"], t, gap)
        first += len(w["rounds"])


# --------------------------------------------------------------------------- what done means


def test_noise_rows_do_not_block_a_wave(make_setup: Callable[..., PipelineSetup], tmp_path: Path) -> None:
    """Noise rows stay NONE forever (the pipeline skips them): a wave whose only NONE rows left are
    noise is done, and a wave of nothing but noise is done after its first round."""
    setup = make_setup(claim_receipts=2, ingest_delay=0.5)
    path = tmp_path / "export"
    partly = make_export(path, 1, sources=[IMG_ROUNDING], noise_receipts=[1])  # receipt 1 all noise
    only_noise = make_export(path, 1, sources=[IMG_VERBATIM], noise_receipts=[1])  # its one receipt
    export = partly.add(only_noise)
    assert only_noise.non_noise() == 0 and partly.non_noise() > 0
    result = run_tool(setup.args(path, "--wave-size", 1, *ROUND_INTERVAL, *WAVE_TIMEOUT), tmp_path / "r.json")
    assert result.code == 0, result.describe()
    assert_embedded(setup, export)
    assert setup.states(export.noise)["NONE"] == export.noise and len(export.noise) > 40

    assert result.report is not None
    waves = {w["image_ids"][0]: w for w in result.report["waves"]}
    assert sorted(waves) == export.ids and all(len(w["image_ids"]) == 1 for w in waves.values())
    assert all(w["outcome"] == "done" for w in waves.values()), waves
    setup.no_overlaps()
    # the wave with something to embed: done with its noise rows NONE
    w = waves[partly.ids[0]]
    check_rounds(setup, w, setup.workflows())
    assert w["rounds"][-1]["rows"] == rows_done(export, partly.ids), w["rounds"][-1]
    # the wave of noise only: one round (the workflows run once, as after every wave), then done
    w = waves[only_noise.ids[0]]
    check_rounds(setup, w, setup.workflows())
    assert len(w["rounds"]) == 1 and w["rounds"][0]["rows"] == rows_done(export, only_noise.ids), w


@pytest.mark.parametrize("condition", ["claimed", "executions"])
def test_wave_done_claimed_and_executions(
    make_setup: Callable[..., PipelineSetup], tmp_path: Path, condition: str
) -> None:
    """``--wave-done claimed``: a wave is done once no non-noise row is NONE, whatever is still
    PENDING (here the pipeline never finishes a row); ``--wave-done executions``: one round per
    wave, whatever is left NONE."""
    # 3 + 2 receipts; the pipeline claims 2 per submit
    ingest_delay = 3600.0 if condition == "claimed" else 1.0
    setup = make_setup(claim_receipts=2, ingest_delay=ingest_delay)
    export = make_export(tmp_path / "export", 2, sources=[IMG_ROUNDING, IMG_PLACE_EMPTY_ID])
    wave_size = 2 if condition == "claimed" else 1
    result = run_tool(setup.args(export.path, "--wave-size", wave_size, "--wave-done", condition,
                                 *ROUND_INTERVAL, *WAVE_TIMEOUT), tmp_path / "r.json")
    assert result.code == 0, result.describe()
    states = setup.states(export.row_keys())  # right after the exit
    assert result.report is not None
    waves = result.report["waves"]
    assert all(w["outcome"] == "done" for w in waves), waves
    for w in waves:
        check_rounds(setup, w, setup.workflows())
    runs = setup.no_overlaps()

    if condition == "claimed":
        # every non-noise row claimed, none finished: the run did not wait for the embeddings
        assert states.get("NONE", set()) == export.noise_of()
        assert states.get("PENDING", set()) == export.embeddable() and "SUCCESS" not in states
        [wave] = waves
        assert len(wave["rounds"]) == 3, wave["rounds"]  # 5 receipts, 2 claimed per round
        rows = wave["rounds"][-1]["rows"]
        assert (rows["none"], rows["pending"], rows["done"]) == (0, export.non_noise(), 0), rows
    else:
        assert len(waves) == 2 and [len(w["rounds"]) for w in waves] == [1, 1], waves
        assert all(len(runs[role]) == 2 for role in ROLES), runs
        # 5 receipts, 2 claimed per round, 2 rounds: rows are left NONE
        assert states.get("NONE", set()) - export.noise, {s: len(k) for s, k in states.items()}


# --------------------------------------------------------------------------- finding the workflows


def test_workflows_by_prefix_by_stack_output_and_an_ambiguous_prefix(
    make_setup: Callable[..., PipelineSetup], tmp_path: Path
) -> None:
    """``--workflow`` takes a prefix matching exactly one state machine (Pulumi's suffixes) and
    ``output:KEY`` of the prod stack outputs; a prefix matching two fails, naming both, and
    writes nothing."""
    setup = make_setup(token=f"-t{time.monotonic_ns() % 10**8:08d}")
    prefixes = setup.workflows("prefix")
    assert all(p.endswith("-") and setup.names[role].startswith(p) for p, role in zip(prefixes, ROLES))

    first = make_export(tmp_path / "one", 1, sources=SMALL_SOURCES)
    result = run_tool(setup.args(first.path, "--wave-size", 1, *ROUND_INTERVAL, *WAVE_TIMEOUT,
                                 workflows=prefixes), tmp_path / "one.json")
    assert result.code == 0, result.describe()
    assert_embedded(setup, first)
    assert result.report is not None
    [wave] = result.report["waves"]
    check_rounds(setup, wave, prefixes)

    second = make_export(tmp_path / "two", 1, sources=SMALL_SOURCES)
    prod = setup.prod_config(tmp_path / "prod.json")
    outputs = setup.workflows("output")
    result = run_tool(setup.args(second.path, "--prod-config", prod, "--wave-size", 1, *ROUND_INTERVAL,
                                 *WAVE_TIMEOUT, workflows=outputs), tmp_path / "two.json")
    assert result.code == 0, result.describe()
    assert_embedded(setup, second)
    assert result.report is not None
    [wave] = result.report["waves"]
    check_rounds(setup, wave, outputs)
    runs = setup.no_overlaps()
    assert reported_arns(result.report) <= all_arns(runs)

    # A second machine under the line-submit prefix: which one is meant is unknown.
    other_name, other_arn = setup.extra_machine("line-submit")
    third = make_export(tmp_path / "three", 1, sources=SMALL_SOURCES)
    before = setup.items()
    result = run_tool(setup.args(third.path, "--wave-size", 1, *ROUND_INTERVAL, *WAVE_TIMEOUT,
                                 workflows=prefixes), tmp_path / "three.json")
    assert result.code != 0, result.describe()
    assert setup.names["line-submit"] in result.output and other_name in result.output, result.describe()
    assert "Traceback" not in result.output, result.describe()
    assert setup.items() == before  # nothing written
    assert all_arns(setup.executions()) == all_arns(runs)  # nothing started
    assert setup.sfn.list_executions(stateMachineArn=other_arn)["executions"] == []


# --------------------------------------------------------------------------- the queue gate


def test_a_dead_letter_queue_with_a_message_stops_the_run_before_any_write(
    make_setup: Callable[..., PipelineSetup], tmp_path: Path
) -> None:
    setup = make_setup()
    export = make_export(tmp_path / "export", 1, sources=SMALL_SOURCES)
    dlq = list(setup.dead_letter_queues)[1]
    setup.put_messages(dlq, 1)
    gate = setup.gate_args(urls=True)
    result = run_tool(setup.args(export.path, "--wave-size", 1, *ROUND_INTERVAL, *WAVE_TIMEOUT, *gate),
                      tmp_path / "r.json")
    assert result.code == 1, result.describe()
    assert "Traceback" not in result.output, result.describe()
    named = [line for line in result.output.splitlines() if dlq in line]
    assert any(re.search(r"\b1\b", line.replace(dlq, "")) for line in named), result.describe()
    assert setup.items() == {}
    assert all(not runs for runs in setup.executions().values())
    assert setup.depth(dlq) == 1  # read, not consumed

    dry = run_tool(setup.args(export.path, "--wave-size", 1, *ROUND_INTERVAL, *gate, dry_run=True),
                   tmp_path / "dry.json")
    assert dry.code == 1, dry.describe()
    assert dlq in dry.output and "would stop" in dry.output.lower(), dry.describe()
    assert "Traceback" not in dry.output, dry.describe()
    assert setup.items() == {} and setup.depth(dlq) == 1


def test_a_deep_queue_is_waited_for_and_the_run_goes_on_once_it_drains(
    make_setup: Callable[..., PipelineSetup], tmp_path: Path
) -> None:
    setup = make_setup()
    export = make_export(tmp_path / "export", 1, sources=SMALL_SOURCES)
    queue = next(iter(setup.live_queues))
    setup.put_messages(queue, 5)
    args = setup.args(export.path, "--wave-size", 1, *ROUND_INTERVAL, *WAVE_TIMEOUT,
                      *setup.gate_args(max_depth=3))
    run = ToolRun(args, tmp_path / "r.json")
    try:
        run.wait_for(r"(?i)waiting")
        assert setup.items() == {}, "a wave was copied while a compaction queue was too deep"
        setup.drain_later(queue, 2.0)
        result = run.wait(180)
    finally:
        run.kill()
    assert result.code == 0, result.describe()
    assert_embedded(setup, export)
    setup.no_overlaps()
    assert result.report is not None
    records = [(r["before"], depth_of(r["depths"], queue))
               for w in result.report["waves"] for r in w["queues"]]
    assert records and records[0] == ("wave", 5), records
    deep = next(i for i, (_, n) in enumerate(records) if n > 3)
    assert any(n <= 3 for _, n in records[deep + 1 :]), records
    assert all(r["before"] in ("wave", "round") for w in result.report["waves"] for r in w["queues"])
    assert result.report["waves"][0]["seconds_waited"].get("queues", 0) >= 1.5, result.report["waves"][0]


# --------------------------------------------------------------------------- runs side by side, re-runs


def test_two_shards_side_by_side_never_overlap_executions(
    make_setup: Callable[..., PipelineSetup], tmp_path: Path
) -> None:
    setup = make_setup(claim_receipts=1, ingest_delay=0.5)
    export = make_export(tmp_path / "export", 4, sources=SMALL_SOURCES, ids=ids_for_shards(2))
    runs = [
        ToolRun(setup.args(export.path, "--wave-size", 1, "--shard", f"{k}/2", *ROUND_INTERVAL,
                           *WAVE_TIMEOUT), tmp_path / f"shard{k}.json")
        for k in range(2)
    ]
    try:
        results = [run.wait(240) for run in runs]
    finally:
        for run in runs:
            run.kill()
    for result in results:
        assert result.code == 0, result.describe()
    assert_embedded(setup, export)
    executions = setup.no_overlaps()
    for role in ROLES:
        n = len(executions[role])
        assert execution_numbers(executions[role]) == list(range(1, n + 1)), role
        assert all(e["status"] == "SUCCEEDED" for e in executions[role])
    reports = [r.report for r in results]
    assert all(reports)
    for k, report in enumerate(reports):
        assert report is not None
        ids = [i for w in report["waves"] for i in w["image_ids"]]
        assert sorted(ids) == [i for i in export.ids if shard_of(i, 2) == k], (k, ids)
        assert all(w["outcome"] == "done" for w in report["waves"])
    assert set[str]().union(*(reported_arns(r) for r in reports if r)) == all_arns(executions)


def test_a_run_stopped_after_its_last_copy_is_finished_by_a_rerun(
    make_setup: Callable[..., PipelineSetup], tmp_path: Path
) -> None:
    """SIGTERM while the last wave's rounds run (its workflows held RUNNING): the same command
    again copies nothing, runs rounds for those images (wave 0) and exits 0 only once every
    non-noise row is SUCCESS."""
    setup = make_setup(claim_receipts=2, ingest_delay=1.0)
    export = make_export(tmp_path / "export", 2, sources=[IMG_ROUNDING, IMG_PLACE_EMPTY_ID])
    args = setup.args(export.path, "--wave-size", 2, *ROUND_INTERVAL, *WAVE_TIMEOUT)
    setup.player.hold.set()
    first = ToolRun(args, tmp_path / "first.json")
    try:
        first.wait_until(lambda: setup.tool_executions()["line-submit"], "the wave's first workflow to start")
        assert set(setup.items()) == set(export.expected)  # the last wave is copied
        first.signal(signal.SIGTERM)
        stopped = first.wait(60)
    finally:
        first.kill()
    assert stopped.code == 143, stopped.describe()
    assert "Traceback" not in stopped.output, stopped.describe()
    setup.player.release()
    setup.wait_all_ended()
    states = setup.states(export.row_keys())
    assert states.get("NONE", set()) - export.noise, "the embeddings were done before the re-run"

    again = run_tool(args, tmp_path / "again.json")
    assert again.code == 0, again.describe()
    assert_embedded(setup, export)  # as the re-run exits: nothing changes the table after it
    assert set(setup.items()) == set(export.expected)
    report = again.report
    assert report is not None
    assert [w["index"] for w in report["waves"]] == [0], report["waves"]
    [wave] = report["waves"]
    assert sorted(wave["image_ids"]) == export.ids and wave["outcome"] == "done", wave
    check_rounds(setup, wave, setup.workflows())
    assert wave["rounds"][-1]["rows"] == rows_done(export, export.ids)
    assert report["images"]["copied"] == 0, report["images"]
    runs = setup.no_overlaps()
    for role in ROLES:
        numbers = execution_numbers(runs[role])
        assert numbers == list(range(1, len(numbers) + 1)), (role, numbers)
    # the stopped run's held execution, then one per round of the re-run
    assert len(runs["line-submit"]) == len(wave["rounds"]) + 1


# --------------------------------------------------------------------------- failures during waits


def _others_waited_for(setup: PipelineSetup, run: ToolRun) -> bool:
    return not setup.tool_executions()["line-submit"] and bool(re.search(r"(?i)waiting", run.output))


def _first_round_over(setup: PipelineSetup) -> bool:
    runs = setup.tool_executions()
    return all(runs[role] and all(e["status"] == "SUCCEEDED" for e in runs[role]) for role in ROLES)


@pytest.mark.parametrize("wait", ["queues", "others", "executions", "round_interval", "backlog"])
def test_a_network_failure_during_a_wait_ends_with_the_summary_and_the_report(
    make_setup: Callable[..., PipelineSetup], tmp_path: Path, wait: str
) -> None:
    """The network goes (connections closed, new ones refused) while the run waits: for a deep
    queue, for another's running execution, for its own executions, in the round interval, for
    the --max-pending-embeddings backlog. Exit 1 with the summary and the report, no traceback."""
    setup = make_setup(ingest_delay=3600.0 if wait == "round_interval" else 1.0)
    export = make_export(tmp_path / "export", 1, sources=[IMG_VERBATIM])
    ddb, moto = Cutoff(setup.table.url), Cutoff(setup.sfn_url)
    interval = "5" if wait == "round_interval" else "0.5"
    extra: list[Any] = ["--wave-size", 1, "--round-interval", interval, "--max-retries", 1, *WAVE_TIMEOUT]
    cut = [moto]
    ready: Callable[[], Any]
    if wait == "queues":
        queue = next(iter(setup.live_queues))
        setup.put_messages(queue, 5)
        extra += setup.gate_args(dead_letter=False, max_depth=3)

        def ready() -> bool:
            return bool(re.search(r"(?i)waiting", run.output))
    elif wait == "others":
        setup.player.hold.set()
        setup.start_other("line-submit")

        def ready() -> bool:
            return _others_waited_for(setup, run)
    elif wait == "executions":
        setup.player.hold.set()

        def ready() -> bool:  # all four started and held: the run waits for them to end
            return all(setup.tool_executions().values()) and bool(re.search(r"(?i)waiting", run.output))
    elif wait == "round_interval":
        cut = [ddb, moto]

        def ready() -> bool:
            return _first_round_over(setup)
    else:
        old = make_export(tmp_path / "old", 1, sources=[IMG_VERBATIM])
        put_items(setup.table.client, setup.table.name, old.expected.values())  # a backlog of NONE rows
        extra += ["--max-pending-embeddings", 1]
        cut = [ddb]

        def ready() -> bool:
            return bool(re.search(r"(?i)waiting", run.output))

    run = ToolRun(setup.args(export.path, *extra, ddb_url=ddb.url, sfn_url=moto.url, sqs_url=moto.url),
                  tmp_path / "r.json")
    try:
        run.wait_until(ready, f"the run to wait ({wait})")
        if wait == "round_interval":
            time.sleep(1.0)  # the wave's rows read after the round: now in the 5 s interval
        for c in cut:
            c.cut()
        result: Finished = run.wait(120)
    finally:
        run.kill()
        ddb.close()
        moto.close()
    assert result.code == 1, result.describe()
    assert "Traceback" not in result.output, result.describe()
    assert "Images found:" in result.stdout, result.describe()
    assert result.report is not None, result.describe()
    assert not any(w.get("outcome") == "done" for w in result.report.get("waves", [])), result.report["waves"]
    if wait in ("queues", "backlog"):  # gates before the first wave: nothing of the export written
        assert not set(export.expected) & set(setup.items())
