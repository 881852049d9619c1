"""The waves harness: Step Functions workflows that really run, an embedding pipeline's
stand-in, exports and runs of the CLI, for the tests of --wave-size (issue 9).

The Step Functions workflows really run: :func:`sfn_url` starts a moto server of the test
module's own as a subprocess for Step Functions and SQS (its execute_state_machine config is
process-global, and moto keeps backends in module globals, so an in-process server would share
state with the session's moto server) and switches execution on; the CLI reaches it with
--sfn-endpoint-url. The table lives on the session's moto server, in this process, so the NONE
count can be sampled from its backend all the time (a GSI1 query costs about a second on a
loaded machine).

The line and word workflows are one Task each that sends its task token to an SQS queue and
waits for it (sqs:sendMessage.waitForTaskToken). A test thread (:class:`Pipeline`) plays the
embedding pipeline: for each token it sets that kind's NONE receipt lines or words to SUCCESS
(with their GSI1PK), then lets the execution succeed; it samples the table-wide NONE count the
whole time. Holding the tokens keeps executions RUNNING for as long as a test needs, so nothing
here depends on how fast the machine is. Other definitions (:data:`FAIL_DEFINITION`,
:func:`wait_definition`) replace a workflow where a test needs it to end otherwise.

conftest's fixtures ``sfn_url`` (module-scoped: :func:`executing_sfn_server`) and ``wave_setup``
(a :class:`Setup` on a fresh moto table) give a test these.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cli import BUCKET_FLAGS, TOOL
from conftest import TableHandle
from exports import clone_export, write_export
from items import GOLDEN_IDS, Key, expected_for_clone, table_items
from servers import (
    EMBEDDING_ROLE,
    REGION,
    die_with_parent,
    env_for_subprocess,
    free_port,
    make_service_client,
    wait_http,
)
from waiting import wait_for

NAME_RE = re.compile(r"copy-dev-to-prod-(\d{6})")  # the tool's turns of one state machine
POLL_ENV = {"COPY_DEV_TO_PROD_POLL_SECONDS": "0.1"}  # the tool's test-only poll interval
KIND_PREFIX = {"line": "LINE#", "word": "WORD#"}


# --------------------------------------------------------------------------- server


def moto_server_command(port: int) -> list[str]:
    """moto's server as a process of its own, on 127.0.0.1:``port``."""
    return [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]


def enable_sfn_execution(url: str) -> None:
    """Switch the moto server at ``url`` to executing state machines (moto only records them
    by default)."""
    request = urllib.request.Request(
        f"{url}/moto-api/config",
        data=json.dumps({"stepfunctions": {"execute_state_machine": True}}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    urllib.request.urlopen(request, timeout=10).close()


@contextlib.contextmanager
def executing_sfn_server() -> Iterator[str]:
    """A moto server subprocess (its URL) with Step Functions executing; stopped on leaving."""
    proc = None
    for _ in range(3):
        port = free_port()
        proc = subprocess.Popen(
            moto_server_command(port),
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
    try:
        enable_sfn_execution(base)
        yield base
    finally:
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


def wait_definition(seconds: int, timeout_seconds: int | None = None) -> str:
    """One Wait state of ``seconds``: an execution that stays RUNNING until something stops it
    (StopExecution: ABORTED), or, with ``timeout_seconds`` shorter, one that Step Functions
    ends TIMED_OUT (moto's executing backend enforces the machine's TimeoutSeconds)."""
    definition: dict[str, Any] = {
        "StartAt": "Wait",
        "States": {"Wait": {"Type": "Wait", "Seconds": seconds, "End": True}},
    }
    if timeout_seconds is not None:
        definition["TimeoutSeconds"] = timeout_seconds
    return json.dumps(definition)


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

        def count() -> list[int] | None:
            try:
                return [sum(
                    1
                    for item in backend_table.all_items()
                    if "GSI1PK" in item.attrs and item.attrs["GSI1PK"].value == "EMBEDDING_STATUS#NONE"
                )]
            except RuntimeError:  # changed size during iteration: the CLI is writing
                return None

        return wait_for(count, timeout=60, interval=0.005,
                        what="a count of the table's NONE items while the CLI is not changing it")[0]

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

    def release(self, kind: str) -> int:
        """While :attr:`hold` is set: answer the held tokens of one kind now (embed, then let
        the execution succeed), the others stay held; the number answered. The loop only
        appends to :attr:`held` while holding."""
        assert self.hold.is_set(), "release() is for a held pipeline"
        mine = [entry for entry in list(self.held) if entry[0] == kind]
        for entry in mine:
            self.held.remove(entry)  # one atomic step each: the loop may append meanwhile
            self.embed(kind)
            self.sfn.send_task_success(taskToken=entry[1], output="{}")
        return len(mine)

    def close(self) -> None:
        self.hold.clear()
        try:
            wait_for(lambda: not self.held or not self.thread.is_alive(), timeout=30,
                     what="the pipeline to let its held executions end",
                     details=lambda: f"{len(self.held)} task token(s) still held")
        finally:
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
        """Wait until the output shows ``text``; fail if the tool exits first."""

        def exited() -> str | None:
            if self.proc.poll() is None or self.reader.is_alive():
                return None
            return f"the tool exited {self.proc.returncode}"

        wait_for(lambda: text in self.output, timeout=timeout, what=f"{text!r} in the tool's output",
                 give_up=exited, details=lambda: self.output)

    def wait(self, timeout: float = 120) -> int:
        code = self.proc.wait(timeout)
        self.reader.join(10)
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def check_names(executions: list[dict[str, Any]], kind: str, waves: int) -> None:
    """The tool's executions of one machine are its turns 1, 2, ... in start order, input {}."""
    del kind  # the machine is the kind's own: names no longer carry it
    for e in executions:
        assert e["input"] == "{}", e
    assert [e["name"] for e in executions] == [f"copy-dev-to-prod-{n:06d}" for n in range(1, waves + 1)]
