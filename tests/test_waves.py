"""--wave-size: a big copy paced by the embedding pipeline (issue 9).

The Step Functions workflows really run: this module starts its own moto server as a subprocess
for Step Functions and SQS (its execute_state_machine config is process-global, and moto keeps
backends in module globals, so an in-process server would share state with the session's moto
server) and switches execution on; the CLI reaches it with --sfn-endpoint-url. The table lives
on the session's moto server, in this process, so the NONE count can be sampled from its backend
all the time (a GSI1 query costs about a second on a loaded machine).

The line and word workflows are one Task each that sends its task token to an SQS queue and
waits for it (sqs:sendMessage.waitForTaskToken). A test thread plays the
embedding pipeline: for each token it sets that kind's NONE receipt lines or words to SUCCESS
(with their GSI1PK), then lets the execution succeed; it samples the table-wide NONE count the
whole time. Holding the tokens keeps executions RUNNING for as long as a test needs, so nothing
here depends on how fast the machine is.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cli import BUCKET_FLAGS
from conftest import TableHandle
from exports import clone_export, fake_uuid, mutate, write_export
from items import GOLDEN_IDS, expected_for_clone, table_items
from servers import (
    EMBEDDING_ROLE,
    REGION,
    die_with_parent,
    env_for_subprocess,
    free_port,
    make_service_client,
    wait_http,
)

import copy_dynamodb_dev_to_prod as tool

TOOL = Path(tool.__file__)
NAME_RE = re.compile(r"copy-dev-to-prod-\d{8}T\d{6}Z-[0-9a-f]{4}-w(\d+)-(line|word)")
POLL_ENV = {"COPY_DEV_TO_PROD_POLL_SECONDS": "0.1"}  # the tool's test-only poll interval
KIND_PREFIX = {"line": "LINE#", "word": "WORD#"}
Key = tuple[str, str]


# --------------------------------------------------------------------------- server


@pytest.fixture(scope="module")
def sfn_url() -> Iterator[str]:
    """A moto server subprocess of this module's own, with Step Functions executing."""
    proc = None
    for _ in range(3):
        port = free_port()
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            env=env_for_subprocess(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=die_with_parent,
        )
        try:
            wait_http(f"http://127.0.0.1:{port}/moto-api/", timeout=30)
            break
        except TimeoutError:
            proc.kill()
            proc.wait(10)
            proc = None
    assert proc is not None, "moto server did not start"
    base = f"http://127.0.0.1:{port}"
    request = urllib.request.Request(
        f"{base}/moto-api/config",
        data=json.dumps({"stepfunctions": {"execute_state_machine": True}}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    urllib.request.urlopen(request, timeout=10).close()
    yield base
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def callback_definition(queue_url: str) -> str:
    """One Task: hand the task token to the pipeline (SQS) and wait until it answers."""
    return json.dumps(
        {
            "StartAt": "Embed",
            "States": {
                "Embed": {
                    "Type": "Task",
                    "Resource": "arn:aws:states:::sqs:sendMessage.waitForTaskToken",
                    "Parameters": {"QueueUrl": queue_url, "MessageBody": {"token.$": "$$.Task.Token"}},
                    "End": True,
                }
            },
        }
    )


FAIL_DEFINITION = json.dumps(
    {
        "StartAt": "Wait",
        "States": {
            "Wait": {"Type": "Wait", "Seconds": 1, "Next": "Broken"},
            "Broken": {"Type": "Fail", "Error": "EmbeddingFailed", "Cause": "the word batch did not compact"},
        },
    }
)


# --------------------------------------------------------------------------- the pipeline


class Pipeline:
    """The embedding pipeline's stand-in (see the module docstring)."""

    def __init__(self, table: TableHandle, sfn_url: str, queues: dict[str, str]) -> None:
        self.table, self.queues = table, queues
        self.ddb = table.client
        self.sqs = make_service_client(sfn_url, "sqs")
        self.sfn = make_service_client(sfn_url, "stepfunctions")
        self.hold = threading.Event()
        self.stop = threading.Event()
        self.held: list[tuple[str, str]] = []
        self.tokens = 0
        self.max_none = 0
        self.samples = 0
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self.loop, daemon=True)
        self.thread.start()

    def none_count(self) -> int:
        """The table-wide NONE count with the pipeline's own GSI1 query."""
        kwargs: dict[str, Any] = {
            "TableName": self.table.name,
            "IndexName": "GSI1",
            "Select": "COUNT",
            "KeyConditionExpression": "GSI1PK = :pk",
            "ExpressionAttributeValues": {":pk": {"S": "EMBEDDING_STATUS#NONE"}},
        }
        total = 0
        while True:
            page = self.ddb.query(**kwargs)
            total += page["Count"]
            if "LastEvaluatedKey" not in page:
                return total
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    def sample(self) -> int:
        """The same count read from the in-process moto backend: cheap enough to sample all the
        time (a GSI1 query takes about a second on a loaded machine)."""
        from moto.core import DEFAULT_ACCOUNT_ID
        from moto.dynamodb.models import dynamodb_backends

        backend_table = dynamodb_backends[DEFAULT_ACCOUNT_ID][REGION].tables[self.table.name]
        while True:
            try:
                return sum(
                    1
                    for item in backend_table.all_items()
                    if "GSI1PK" in item.attrs and item.attrs["GSI1PK"].value == "EMBEDDING_STATUS#NONE"
                )
            except RuntimeError:  # changed size during iteration: the CLI is writing
                time.sleep(0.005)

    def embed(self, kind: str) -> None:
        """Set every NONE item of this kind to SUCCESS (with its GSI1PK), as the workflow does:
        found with the pipeline's GSI1 query, written back 25 at a time (one UpdateItem each
        would be ~20x the requests; TransactWriteItems copies moto's whole backend per call)."""
        kwargs: dict[str, Any] = {
            "TableName": self.table.name,
            "IndexName": "GSI1",
            "KeyConditionExpression": "GSI1PK = :pk AND begins_with(GSI1SK, :sk)",
            "ExpressionAttributeValues": {
                ":pk": {"S": "EMBEDDING_STATUS#NONE"},
                ":sk": {"S": KIND_PREFIX[kind]},
            },
        }
        items = []
        while True:
            page = self.ddb.query(**kwargs)
            items += page["Items"]
            if "LastEvaluatedKey" not in page:
                break
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]
        done = [
            dict(i, embedding_status={"S": "SUCCESS"}, GSI1PK={"S": "EMBEDDING_STATUS#SUCCESS"})
            for i in items
        ]
        for start in range(0, len(done), 25):
            requests = [{"PutRequest": {"Item": i}} for i in done[start : start + 25]]
            while requests:
                response = self.ddb.batch_write_item(RequestItems={self.table.name: requests})
                requests = response.get("UnprocessedItems", {}).get(self.table.name, [])

    def loop(self) -> None:
        try:
            while not self.stop.is_set():
                self.max_none = max(self.max_none, self.sample())
                self.samples += 1
                for kind, queue in self.queues.items():
                    messages = self.sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10)
                    for m in messages.get("Messages", []):
                        self.sqs.delete_message(QueueUrl=queue, ReceiptHandle=m["ReceiptHandle"])
                        self.held.append((kind, json.loads(m["Body"])["token"]))
                        self.tokens += 1
                while self.held and not self.hold.is_set():
                    kind, token = self.held.pop(0)
                    self.embed(kind)
                    self.sfn.send_task_success(taskToken=token, output="{}")
                time.sleep(0.05)
        except BaseException as exc:  # surfaced by close()
            self.error = exc

    def close(self) -> None:
        self.hold.clear()
        deadline = time.monotonic() + 30
        while self.held and self.thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.05)  # held executions end
        self.stop.set()
        self.thread.join(30)
        if self.error:
            raise self.error


class Setup:
    """A fresh table, two fresh workflows (callback machines) and the pipeline for one test."""

    def __init__(self, table: TableHandle, sfn_url: str, word_definition: str | None = None) -> None:
        self.table, self.sfn_url = table, sfn_url
        sqs, self.sfn = make_service_client(sfn_url, "sqs"), make_service_client(sfn_url, "stepfunctions")
        suffix = uuid.uuid4().hex[:8]
        self.queues = {k: sqs.create_queue(QueueName=f"{k}-{suffix}")["QueueUrl"] for k in ("line", "word")}
        self.machines = {}
        for kind in ("line", "word"):
            definition = callback_definition(self.queues[kind])
            if kind == "word" and word_definition is not None:
                definition = word_definition
            name = f"embedding-infra-prod-{kind}-workflow-{suffix}"
            self.machines[kind] = self.sfn.create_state_machine(
                name=name, definition=definition, roleArn=EMBEDDING_ROLE
            )["stateMachineArn"]
        self.pipeline = Pipeline(table, sfn_url, self.queues)

    def args(self, export: Path, *extra: Any) -> list[str]:
        return [
            "--no-dry-run",
            "--yes",
            "--no-progress",
            "--table",
            self.table.name,
            "--endpoint-url",
            self.table.url,
            "--sfn-endpoint-url",
            self.sfn_url,
            "--region",
            REGION,
            "--export-dir",
            str(export),
            *BUCKET_FLAGS,
            "--line-state-machine",
            self.machines["line"].rsplit(":", 1)[1],
            "--word-state-machine",
            self.machines["word"].rsplit(":", 1)[1],
            *map(str, extra),
        ]

    def executions(self, kind: str) -> list[dict[str, Any]]:
        out = []
        for page in self.sfn.get_paginator("list_executions").paginate(stateMachineArn=self.machines[kind]):
            out += [self.sfn.describe_execution(executionArn=e["executionArn"]) for e in page["executions"]]
        return sorted(out, key=lambda e: e["startDate"])

    def items(self) -> dict[Key, dict[str, Any]]:
        return table_items(self.table.client, self.table.name)

    def image_ids_in_prod(self) -> set[str]:
        return {pk[len("IMAGE#") :] for pk, sk in self.items() if sk == "IMAGE"}

    def close(self) -> None:
        self.pipeline.close()


@pytest.fixture
def setup(fresh_table: TableHandle, sfn_url: str) -> Iterator[Setup]:
    s = Setup(fresh_table, sfn_url)
    yield s
    s.close()


# --------------------------------------------------------------------------- exports and runs


def make_export(dst: Path, count: int) -> tuple[list[str], dict[Key, dict[str, Any]]]:
    """``count`` golden images cloned under new random ids (an export no test has seen);
    returns the ids in file order and the expected items."""
    expected: dict[Key, dict[str, Any]] = {}
    ids = []
    for n in range(count):
        source, new_id = GOLDEN_IDS[n % len(GOLDEN_IDS)], str(uuid.uuid4())
        write_export(dst, clone_export(source, new_id))
        expected.update(expected_for_clone(source, new_id))
        ids.append(new_id)
    return sorted(ids), expected


def embedded(expected: dict[Key, dict[str, Any]]) -> dict[Key, dict[str, Any]]:
    """The expected items after the pipeline embedded every receipt line and word."""
    out = {}
    for key, item in expected.items():
        if item["TYPE"]["S"] in ("RECEIPT_LINE", "RECEIPT_WORD"):
            item = dict(item, embedding_status={"S": "SUCCESS"}, GSI1PK={"S": "EMBEDDING_STATUS#SUCCESS"})
        out[key] = item
    return out


def none_items_per_image(expected: dict[Key, dict[str, Any]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for (pk, _), item in expected.items():
        if item["TYPE"]["S"] in ("RECEIPT_LINE", "RECEIPT_WORD"):
            out[pk[len("IMAGE#") :]] = out.get(pk[len("IMAGE#") :], 0) + 1
    return out


def run(
    args: list[str], report: Path | None = None, timeout: float = 300
) -> tuple[subprocess.CompletedProcess[str], Any]:
    if report is not None:
        args = [*args, "--report", str(report)]
        report.unlink(missing_ok=True)
    proc = subprocess.run(
        [sys.executable, str(TOOL), *args],
        env=env_for_subprocess(base={**os.environ, **POLL_ENV}),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    data = json.loads(report.read_text()) if report is not None and report.exists() else None
    return proc, data


class Background:
    """The CLI as a background process whose stdout/stderr lines are collected as they come."""

    def __init__(self, args: list[str]) -> None:
        self.lines: list[str] = []
        self.proc = subprocess.Popen(
            [sys.executable, str(TOOL), *args],
            env=env_for_subprocess(base={**os.environ, **POLL_ENV}),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.reader = threading.Thread(target=self.read, daemon=True)
        self.reader.start()

    def read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_for(self, text: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.output:
            assert self.proc.poll() is None or text in self.output, (
                f"exited {self.proc.returncode}:\n{self.output}"
            )
            assert time.monotonic() < deadline, f"{text!r} not seen:\n{self.output}"
            time.sleep(0.05)

    def wait(self, timeout: float = 120) -> int:
        code = self.proc.wait(timeout)
        self.reader.join(10)
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def check_names(executions: list[dict[str, Any]], kind: str, waves: int) -> None:
    names = [e["name"] for e in executions]
    assert len(set(names)) == len(names), names
    for e in executions:
        assert e["input"] == "{}", e
        m = NAME_RE.fullmatch(e["name"])
        assert m and m[2] == kind and len(e["name"]) <= 80, e["name"]
    waves_named = [int(m[1]) for m in map(NAME_RE.fullmatch, names) if m]
    assert sorted(waves_named) == list(range(1, waves + 1))


# --------------------------------------------------------------------------- tests


def test_twenty_images_in_waves_of_five(setup: Setup, tmp_path: Path) -> None:
    """The "done when" scenario: paced by a pipeline that really runs, table exact afterwards."""
    ids, expected = make_export(tmp_path / "export", 20)
    proc, report = run(
        setup.args(tmp_path / "export", "--wave-size", 5, "--trigger-embeddings"), tmp_path / "r.json"
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr

    for kind in ("line", "word"):
        runs = setup.executions(kind)
        assert len(runs) == 4 and all(e["status"] == "SUCCEEDED" for e in runs), runs
        check_names(runs, kind, 4)
    # Each wave's workflows started only after the previous wave's had ended.
    line, word = setup.executions("line"), setup.executions("word")
    for k in range(1, 4):
        assert min(line[k]["startDate"], word[k]["startDate"]) >= max(
            line[k - 1]["stopDate"], word[k - 1]["stopDate"]
        )

    per_image = none_items_per_image(expected)
    bound = sum(sorted(per_image.values(), reverse=True)[:5])
    assert setup.pipeline.samples > 10
    assert 0 < setup.pipeline.max_none <= bound, (setup.pipeline.max_none, bound)

    actual = setup.items()
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


def test_waves_count_is_ceil_and_rerun_copies_nothing(setup: Setup, tmp_path: Path) -> None:
    """7 images in waves of 3: 3 executions per workflow; a re-run has no wave and starts nothing."""
    make_export(tmp_path / "export", 7)
    proc, report = run(setup.args(tmp_path / "export", "--wave-size", 3), tmp_path / "r.json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert [w["images"] for w in report["waves"]] == [3, 3, 1]
    for kind in ("line", "word"):
        check_names(setup.executions(kind), kind, math.ceil(7 / 3))

    again, report = run(setup.args(tmp_path / "export", "--wave-size", 3), tmp_path / "r.json")
    assert again.returncode == 0, again.stdout + again.stderr
    assert report["waves"] == [] and report["images"]["skipped_existing"] == 7
    assert len(setup.executions("line")) == len(setup.executions("word")) == 3


def test_limit_applies_before_the_waves_and_names_stay_unique_across_runs(
    setup: Setup, tmp_path: Path
) -> None:
    ids, _ = make_export(tmp_path / "export", 5)
    proc, report = run(setup.args(tmp_path / "export", "--wave-size", 2, "--limit", 3), tmp_path / "r.json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert [w["image_ids"] for w in report["waves"]] == [ids[:2], ids[2:3]]
    assert report["images"]["not_reached_limit"] == 2 and report["images"]["total"] == 5
    assert "Left for later (--limit)" in proc.stdout

    again, report = run(setup.args(tmp_path / "export", "--wave-size", 2), tmp_path / "r.json")
    assert again.returncode == 0, again.stdout + again.stderr
    assert [w["image_ids"] for w in report["waves"]] == [ids[3:]]
    assert report["images"]["skipped_existing"] == 3 and setup.image_ids_in_prod() == set(ids)
    for kind in ("line", "word"):
        names = [e["name"] for e in setup.executions(kind)]
        assert len(names) == 3 == len(set(names)) and all(NAME_RE.fullmatch(n) for n in names)


def test_sigterm_while_waiting_exits_143_and_says_the_executions_keep_running(
    setup: Setup, tmp_path: Path
) -> None:
    make_export(tmp_path / "export", 1)
    setup.pipeline.hold.set()
    bg = Background(setup.args(tmp_path / "export", "--wave-size", 1, "--report", tmp_path / "r.json"))
    try:
        bg.wait_for("waiting for the line and word workflows to end")
        bg.proc.send_signal(signal.SIGTERM)
        assert bg.wait(30) == 143, bg.output
    finally:
        bg.kill()
    running = [setup.executions(k)[0] for k in ("line", "word")]
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


def test_ctrl_c_while_waiting_then_rerun_waits_for_the_running_executions(
    setup: Setup, tmp_path: Path
) -> None:
    ids, expected = make_export(tmp_path / "export", 4)
    args = setup.args(tmp_path / "export", "--wave-size", 2, "--report", tmp_path / "r.json")
    setup.pipeline.hold.set()
    first = Background(args)
    try:
        first.wait_for("waiting for the line and word workflows to end")
        assert len(setup.executions("line")) == len(setup.executions("word")) == 1
        first.proc.send_signal(signal.SIGINT)
        assert first.wait(30) == 130, first.output
    finally:
        first.kill()
    assert "keep running in AWS" in first.output
    held = [setup.executions(k)[0] for k in ("line", "word")]
    assert all(e["status"] == "RUNNING" and e["executionArn"] in first.output for e in held)
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["interrupted"] is True and report["waves"][0]["outcome"] == "interrupted"
    assert setup.image_ids_in_prod() == set(ids[:2])

    # The re-run copies the next wave, then waits for the still-running executions before its own.
    second = Background(args)
    try:
        second.wait_for("waiting for execution(s) already running")
        assert setup.image_ids_in_prod() == set(ids)
        assert len(setup.executions("line")) == len(setup.executions("word")) == 1
        setup.pipeline.hold.clear()
        assert second.wait(120) == 0, second.output
    finally:
        second.kill()
    runs = {kind: setup.executions(kind) for kind in ("line", "word")}
    assert [e["executionArn"] for e in (runs["line"][0], runs["word"][0])] == [
        e["executionArn"] for e in held
    ]
    held_ended = max(runs["line"][0]["stopDate"], runs["word"][0]["stopDate"])
    for kind in ("line", "word"):
        assert len(runs[kind]) == 2 and all(e["status"] == "SUCCEEDED" for e in runs[kind])
        assert runs[kind][1]["startDate"] >= held_ended
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["waves"][0]["waited_for_running"] == [e["executionArn"] for e in held]
    actual, want = setup.items(), embedded(expected)
    assert set(actual) == set(want) and [k for k in want if actual[k] != want[k]] == []


def test_wave_timeout_exits_1_and_a_rerun_continues(setup: Setup, tmp_path: Path) -> None:
    ids, _ = make_export(tmp_path / "export", 3)
    setup.pipeline.hold.set()
    args = setup.args(tmp_path / "export", "--wave-size", 2, "--wave-timeout", 1)
    proc, report = run(args, tmp_path / "r.json")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "--wave-timeout 1 s" in proc.stderr and "re-running the same command continues" in proc.stderr
    assert report["waves"][0]["outcome"] == "timed out" and report["waves"][0]["seconds_waited"] >= 1
    assert setup.image_ids_in_prod() == set(ids[:2])
    setup.pipeline.hold.clear()
    again, report = run(args[:-2], tmp_path / "r.json")
    assert again.returncode == 0, again.stdout + again.stderr
    assert setup.image_ids_in_prod() == set(ids) and [w["image_ids"] for w in report["waves"]] == [ids[2:]]


def test_backlog_gate_waits_for_the_none_count(setup: Setup, tmp_path: Path) -> None:
    """--max-pending-embeddings: the first wave waits until the table's NONE count is low enough."""
    make_export(tmp_path / "old", 1)
    proc, _ = run(setup.args(tmp_path / "old"))  # plain copy: its lines/words stay NONE
    assert proc.returncode == 0, proc.stdout + proc.stderr
    backlog = setup.pipeline.none_count()
    assert backlog > 0
    ids, _ = make_export(tmp_path / "export", 2)
    bg = Background(
        setup.args(tmp_path / "export", "--wave-size", 2, "--max-pending-embeddings", backlog - 1)
    )
    try:
        bg.wait_for("--max-pending-embeddings")
        assert setup.image_ids_in_prod().isdisjoint(ids)
        setup.pipeline.embed("line")  # the pipeline catches up
        assert bg.wait(120) == 0, bg.output
    finally:
        bg.kill()
    assert set(ids) <= setup.image_ids_in_prod()


def test_on_a_terminal_it_asks_and_shows_one_status_line_while_waiting(setup: Setup, tmp_path: Path) -> None:
    """stdin, stdout and stderr a terminal: the confirmation says workflows will start, and while
    the workflows run one status line shows the wave, the time waited and its NONE records."""
    ids, expected = make_export(tmp_path / "export", 2)
    args = [
        a for a in setup.args(tmp_path / "export", "--wave-size", 2) if a not in ("--yes", "--no-progress")
    ]
    setup.pipeline.hold.set()
    master, slave = os.openpty()
    proc = subprocess.Popen(
        [sys.executable, str(TOOL), *args],
        env=env_for_subprocess(base={**os.environ, **POLL_ENV}),
        stdin=slave,
        stdout=slave,
        stderr=slave,
    )
    os.close(slave)
    chunks: list[bytes] = []

    def read() -> None:
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()

    def seen(text: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while text not in b"".join(chunks).decode("utf-8", "replace"):
            assert proc.poll() is None, b"".join(chunks).decode("utf-8", "replace")
            assert time.monotonic() < deadline, b"".join(chunks).decode("utf-8", "replace")
            time.sleep(0.05)

    try:
        seen("Type 'yes' to continue")
        os.write(master, b"yes\n")
        none = sum(none_items_per_image(expected).values())
        lines = sum(1 for k, i in expected.items() if i["TYPE"]["S"] == "RECEIPT_LINE")
        seen(f"this wave still NONE: {lines:,} lines, {none - lines:,} words")
        setup.pipeline.hold.clear()
        assert proc.wait(120) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        reader.join(10)
        os.close(master)
    out = b"".join(chunks).decode("utf-8", "replace")
    assert "in waves of 2 images: after each wave that wrote something the line and word workflows" in out
    assert "\r\x1b[Kwave 1 of 1: waited 0m 0" in out  # rewritten in place, under the bars
    assert setup.image_ids_in_prod() == set(ids)


def test_dry_run_prints_the_plan_and_starts_nothing(setup: Setup, tmp_path: Path) -> None:
    make_export(tmp_path / "export", 5)
    args = [a for a in setup.args(tmp_path / "export", "--wave-size", 2) if a != "--no-dry-run"]
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
            setup.machines["line"].rsplit(":", 1)[1] in line
            and setup.machines["word"].rsplit(":", 1)[1] in line
        )
    assert setup.executions("line") == setup.executions("word") == []
    assert setup.items() == {}


def test_dry_run_plan_is_what_the_live_run_does_wave_by_wave(setup: Setup, tmp_path: Path) -> None:
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
    pre, _ = run(setup.args(export, "--image-id", ids[2]))
    assert pre.returncode == 0, pre.stdout + pre.stderr

    args = setup.args(export, "--wave-size", 1, "--no-skip-existing")
    dry, plan = run([a for a in args if a != "--no-dry-run"], tmp_path / "plan.json")
    assert dry.returncode == 1, dry.stdout + dry.stderr  # the failed image
    assert setup.executions("line") == setup.executions("word") == []
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
    assert all(e["status"] == "SUCCEEDED" for k in ("line", "word") for e in setup.executions(k))
    assert len(setup.executions("line")) == len(setup.executions("word")) == 2
    assert setup.image_ids_in_prod() == {ids[0], ids[2], ids[3]}


@pytest.mark.parametrize("waves", [False, True], ids=["straight", "waves"])
def test_limit_counts_only_images_the_plan_copies(setup: Setup, tmp_path: Path, waves: bool) -> None:
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
    proc, report = run(setup.args(export, "--limit", 1, *extra), tmp_path / "r.json")
    assert proc.returncode == 1, proc.stdout + proc.stderr  # the failing image
    assert setup.image_ids_in_prod() == {ids[2]}
    images = report["images"]
    assert (images["copied"], images["skipped_empty"], images["failed"], images["not_reached_limit"],
            images["interrupted"], images["total"]) == (1, 1, 1, 1, 0, 4), images
    if waves:
        assert [w["image_ids"] for w in report["waves"]] == [[ids[2]]]


def test_a_run_failing_before_its_first_wave_counts_every_planned_image(
    setup: Setup, tmp_path: Path
) -> None:
    """A state machine that does not exist stops the live run before anything is copied, and
    the dry run (which reads prod) resolves the names as the live run does and fails the same
    way. Either way every planned image is counted: none was copied, none is "done"."""
    make_export(tmp_path / "export", 4)
    args = [a if a != setup.machines["word"].rsplit(":", 1)[1] else "nope"
            for a in setup.args(tmp_path / "export", "--wave-size", 2)]
    for dry in (True, False):
        proc, report = run([a for a in args if a != "--no-dry-run"] if dry else args, tmp_path / "r.json")
        assert proc.returncode == 1, proc.stdout + proc.stderr
        assert "state machine 'nope' not found" in proc.stderr, proc.stderr
        assert "would start nope" not in proc.stdout
        assert re.search(r"^Images found:\s+4$", proc.stdout, re.M), proc.stdout
        assert report["images"]["total"] == 4 and report["images"]["copied"] == 0, report["images"]
        assert report["images"]["interrupted"] == 4 and report["wave_plan"]["images"] == 4
        assert "nothing is left to do" not in proc.stdout + proc.stderr
    assert setup.items() == {}


def test_a_wave_stopped_mid_copy_counts_what_it_wrote(setup: Setup, tmp_path: Path) -> None:
    """SIGTERM while the first wave is being copied: the wave's numbers are its own tally's,
    so what it says it wrote is what the run wrote (it said 0 while the report said 375)."""
    make_export(tmp_path / "export", 3)
    bg = Background(setup.args(tmp_path / "export", "--wave-size", 3, "--max-workers", 1,
                               "--max-items-per-second", 60, "--report", tmp_path / "r.json"))
    try:
        deadline = time.monotonic() + 120
        while not setup.items():
            assert bg.proc.poll() is None and time.monotonic() < deadline, bg.output
            time.sleep(0.05)
        bg.proc.send_signal(signal.SIGTERM)
        assert bg.wait(60) == 143, bg.output
    finally:
        bg.kill()
    report = json.loads((tmp_path / "r.json").read_text())
    [wave] = report["waves"]
    written = len(setup.items())
    assert 0 < wave["items_written"] == report["items"]["written"] == written, (wave, report["items"])
    assert report["images"]["total"] == 3 and report["images"]["interrupted"] >= 1, report["images"]
    assert setup.executions("line") == []


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

    waiter = tool.Waiter(600, 2, clock=lambda: now[0], sleep=sleep, poll=(tool.POLL_FIRST, tool.POLL_MAX))
    wave = tool.Wave(1, [])
    with pytest.raises(tool.FatalError, match="--wave-timeout 600 s"):
        waiter.wait(wave, lambda: (False, "line RUNNING"), start="waiting", interrupted="-")
    assert 2 <= sleeps[0] <= 5 and max(sleeps) == 30  # a few seconds, growing to 30
    assert sleeps[:-1] == sorted(sleeps[:-1])  # the last one is cut to the timeout
    assert sum(sleeps) == pytest.approx(600) and wave.seconds_waited == pytest.approx(600)
    assert wave.outcome == "timed out"

    # A probe that succeeds on its third call: two sleeps, then back without error; a later wait
    # of the same wave shares its budget (the wave has waited 90 s of 100).
    answers = iter([False, False, True])
    sleeps.clear()
    wave = tool.Wave(2, [], seconds_waited=90.0)
    waiter.timeout = 100
    waiter.wait(wave, lambda: (next(answers), ""), start="waiting", interrupted="-")
    assert sleeps == [3.0, 4.5] and wave.seconds_waited == pytest.approx(97.5)
    sleeps.clear()
    with pytest.raises(tool.FatalError):
        waiter.wait(wave, lambda: (False, ""), start="waiting", interrupted="-")
    assert sum(sleeps) == pytest.approx(2.5) and wave.seconds_waited == pytest.approx(100)


def test_execution_names_are_valid_and_unique() -> None:
    cfg = tool.Config(export_dir=Path("."), shard=(12, 64))
    ids = {tool.new_run_id(cfg, time.time()) for _ in range(50)}
    assert len(ids) > 40  # a random token per run
    name = tool.execution_name(next(iter(ids)), "line", 12345)
    assert len(name) <= 80 and re.fullmatch(r"[A-Za-z0-9_-]+", name) and "-s12of64-" in name


def test_summary_counts_a_wave_stopped_before_its_copy_as_not_run() -> None:
    """--max-pending-embeddings: a wave whose backlog wait ended the run copied nothing, so it
    is not among the waves run, and its images are among those not run."""
    plan = {"wave_size": 5, "waves": 2, "images": 10, "dry_run": False}
    waiting = {"index": 1, "images": 5, "outcome": "timed out", "seconds_waited": 3.0}
    assert tool.wave_summary_lines(plan, [waiting])[0] == \
        "Waves of up to 5 images: 0 of 2 run (10 images in the waves not run)"
    copied = {"index": 1, "images": 5, "images_copied": 5, "items_written": 90, "outcome": "done"}
    assert tool.wave_summary_lines(plan, [copied])[0] == \
        "Waves of up to 5 images: 1 of 2 run (5 images in the waves not run)"
