"""The pipeline harness: the receipt system's embedding pipeline as it runs today, for the tests
of waves paced by what the pipeline has finished (issue 20).

* Four Step Functions state machines per test, named as Pulumi names them, with a random
  suffix (``line-submit-sf-prod-<8 hex>``, ``word-submit-sf-prod-<hex>``,
  ``line-ingest-sf-prod-<hex>``, ``word-ingest-sf-prod-<hex>``), on the test module's moto
  server with Step Functions executing (conftest's ``sfn_url``). Each is one Task that sends
  its task token to an SQS queue of its own and waits (``sqs:sendMessage.waitForTaskToken``),
  so :class:`Player` decides when and how each execution ends; a definition can be replaced
  (e.g. :data:`FAIL_DEFINITION`).
* :class:`Player`, a test thread playing the embedding pipeline against the table on
  DynamoDB Local: a *submit* execution claims at most ``claim_receipts`` receipts of its kind
  (GSI1 ``EMBEDDING_STATUS#NONE``, noise rows skipped: they stay ``NONE``) by setting them
  ``PENDING``; an *ingest* execution sets ``SUCCESS`` only the rows it claimed at least
  ``ingest_delay`` seconds before. A second thread samples the table-wide number of rows in
  flight (non-noise ``NONE`` plus ``PENDING``) all the time, with GSI1 queries, holding the lock
  the player's own status changes take. ``hold`` keeps the task tokens (executions stay
  RUNNING).
* The compaction gate's SQS queues (two live queues, two dead-letter queues) on the same moto
  server, with helpers to fill and drain them.
* :class:`Cutoff`, a TCP forwarder on 127.0.0.1 that a test cuts at the moment it chooses
  (connections closed, new ones refused): a network failure in the middle of a wait.
* :func:`make_export`: golden images cloned under new ids with noise rows marked, and the
  rows they become; :class:`ToolRun` / :func:`run_tool`: the CLI as a subprocess.

Everything talks to 127.0.0.1 only, and every wait has a deadline (``waiting.wait_for``).
"""

from __future__ import annotations

import itertools
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cli import BUCKET_FLAGS, TOOL
from conftest import TableHandle
from exports import clone_export, write_export
from items import GOLDEN_IDS, Item, Key, expected_for_clone, table_items
from servers import EMBEDDING_ROLE, REGION, env_for_subprocess, make_client, make_service_client
from waiting import wait_for
from waves import FAIL_DEFINITION as FAIL_DEFINITION  # re-exported: a workflow that ends FAILED
from waves import callback_definition

POLL_ENV = {"COPY_DEV_TO_PROD_POLL_SECONDS": "0.1"}  # the tool's test-only poll interval
#: The four workflows in the order the CLI starts them (``--workflow`` order).
ROLES = ("line-submit", "word-submit", "line-ingest", "word-ingest")
KINDS = ("line", "word")
KIND_PREFIX = {"line": "LINE#", "word": "WORD#"}
ROW_TYPES = {"RECEIPT_LINE": "line", "RECEIPT_WORD": "word"}
#: The names the tool gives its executions: a per-state-machine turn counter.
EXECUTION_NAME_RE = re.compile(r"copy-dev-to-prod-(\d{6})")
PASS_DEFINITION = json.dumps({"StartAt": "Done", "States": {"Done": {"Type": "Pass", "End": True}}})


def kind_of(role: str) -> str:
    return role.split("-")[0]


def step_of(role: str) -> str:
    return role.split("-")[1]


def output_key(role: str) -> str:
    """The prod stack output naming ``role``'s state machine, e.g. ``embedding_line_submit_sf_arn``."""
    return f"embedding_{kind_of(role)}_{step_of(role)}_sf_arn"


def status_pk(status: str) -> str:
    return f"EMBEDDING_STATUS#{status}"


def is_noise(item: Item) -> bool:
    return bool(item.get("is_noise", {}).get("BOOL"))


# --------------------------------------------------------------------------- the pipeline


class Player:
    """The embedding pipeline's stand-in (see the module docstring): one thread answers the
    workflows' task tokens, one samples the rows in flight."""

    def __init__(self, table: TableHandle, sfn_url: str, queues: dict[str, str], *,
                 claim_receipts: int, ingest_delay: float, sample: bool = True) -> None:
        self.table, self.queues = table, queues  # role -> callback queue URL
        self.claim_receipts, self.ingest_delay = claim_receipts, ingest_delay
        self.ddb = make_client(table.url)
        self.sampler_ddb = make_client(table.url)
        self.sqs = make_service_client(sfn_url, "sqs")
        self.sfn = make_service_client(sfn_url, "stepfunctions")
        self.lock = threading.Lock()  # the player's status changes, and each sample
        self.hold = threading.Event()
        self.stop = threading.Event()
        self.held: list[tuple[str, str]] = []  # (role, task token)
        self.claimed: dict[Key, tuple[str, float]] = {}  # row -> (kind, monotonic claim time)
        self.tokens = 0
        self.actions: list[tuple[str, int]] = []  # (role, rows changed) per execution answered
        self.max_in_flight = 0
        self.samples = 0
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._loop, name="player", daemon=True)
        self.sampler = threading.Thread(target=self._sample_loop, name="player-sampler", daemon=True)
        self.thread.start()
        if sample:  # ``sample=False``: no sampler thread (max_in_flight stays 0)
            self.sampler.start()

    # ----------------------------------------------------------------- reading the table

    def _query(self, client: Any, **kwargs: Any) -> Iterable[dict[str, Any]]:
        kwargs = {"TableName": self.table.name, "IndexName": "GSI1", **kwargs}
        while True:
            page = client.query(**kwargs)
            yield page
            if "LastEvaluatedKey" not in page:
                return
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    def count(self, status: str, *, noise: bool | None = None, client: Any = None) -> int:
        """Rows (lines and words) of ``status`` table-wide, with one GSI1 query; ``noise``:
        False counts only rows that are not noise, True only noise rows."""
        kwargs: dict[str, Any] = {
            "Select": "COUNT",
            "KeyConditionExpression": "GSI1PK = :pk",
            "ExpressionAttributeValues": {":pk": {"S": status_pk(status)}},
        }
        if noise is not None:
            kwargs["FilterExpression"] = (
                "is_noise = :true" if noise else "attribute_not_exists(is_noise) OR is_noise <> :true"
            )
            kwargs["ExpressionAttributeValues"][":true"] = {"BOOL": True}
        return sum(page["Count"] for page in self._query(client or self.ddb, **kwargs))

    def in_flight(self, client: Any = None) -> int:
        """Non-noise NONE rows plus PENDING rows, table-wide. Taken under the lock, PENDING
        first: the player cannot move a row between the two queries, and the tool only adds NONE
        rows, so the sum is never more than the rows in flight at some moment of the sample."""
        with self.lock:
            pending = self.count("PENDING", client=client)
            none = self.count("NONE", noise=False, client=client)
        return pending + none

    def rows_of(self, status: str, kind: str) -> list[Item]:
        """Keys and noise flag of this kind's ``status`` rows, in GSI1 order."""
        out: list[Item] = []
        for page in self._query(
            self.ddb,
            KeyConditionExpression="GSI1PK = :pk AND begins_with(GSI1SK, :sk)",
            ExpressionAttributeValues={":pk": {"S": status_pk(status)}, ":sk": {"S": KIND_PREFIX[kind]}},
            ProjectionExpression="PK, SK, is_noise",
        ):
            out += page["Items"]
        return out

    # ----------------------------------------------------------------- what the workflows do

    def _set(self, key: Key, old: str, new: str) -> bool:
        try:
            self.ddb.update_item(
                TableName=self.table.name,
                Key={"PK": {"S": key[0]}, "SK": {"S": key[1]}},
                UpdateExpression="SET embedding_status = :new, GSI1PK = :pk",
                ConditionExpression="embedding_status = :old",
                ExpressionAttributeValues={
                    ":new": {"S": new}, ":pk": {"S": status_pk(new)}, ":old": {"S": old},
                },
            )
            return True
        except self.ddb.exceptions.ConditionalCheckFailedException:
            return False

    def submit(self, kind: str) -> int:
        """Claim at most ``claim_receipts`` receipts of ``kind`` (NONE -> PENDING, noise rows
        skipped); returns the rows claimed."""
        receipts: list[tuple[str, str]] = []
        chosen: list[Key] = []
        for item in self.rows_of("NONE", kind):
            if is_noise(item):
                continue
            key = (item["PK"]["S"], item["SK"]["S"])
            receipt = (key[0], key[1].split("#")[1])  # SK: RECEIPT#00001#LINE#00002[#WORD#00003]
            if receipt not in receipts:
                if len(receipts) >= self.claim_receipts:
                    continue
                receipts.append(receipt)
            chosen.append(key)
        claimed = 0
        with self.lock:
            now = time.monotonic()
            for key in chosen:
                if self._set(key, "NONE", "PENDING"):
                    self.claimed[key] = (kind, now)
                    claimed += 1
        return claimed

    def ingest(self, kind: str) -> int:
        """Rows of ``kind`` claimed at least ``ingest_delay`` s ago and still PENDING -> SUCCESS;
        rows claimed more recently stay PENDING. Returns the rows set SUCCESS."""
        done = 0
        with self.lock:
            now = time.monotonic()
            due = [k for k, (kd, at) in self.claimed.items() if kd == kind and now - at >= self.ingest_delay]
            for key in due:
                del self.claimed[key]
                done += self._set(key, "PENDING", "SUCCESS")
        return done

    def play(self, role: str) -> int:
        return self.submit(kind_of(role)) if step_of(role) == "submit" else self.ingest(kind_of(role))

    # ----------------------------------------------------------------- threads

    def _loop(self) -> None:
        try:
            while not self.stop.is_set():
                for role, queue in self.queues.items():
                    messages = self.sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10)
                    for m in messages.get("Messages", []):
                        self.sqs.delete_message(QueueUrl=queue, ReceiptHandle=m["ReceiptHandle"])
                        self.held.append((role, json.loads(m["Body"])["token"]))
                        self.tokens += 1
                while self.held and not self.hold.is_set():
                    role, token = self.held[0]
                    self.actions.append((role, self.play(role)))
                    self.sfn.send_task_success(taskToken=token, output="{}")
                    self.held.pop(0)
                time.sleep(0.05)
        except BaseException as exc:  # surfaced by close()
            self.error = exc

    def _sample_loop(self) -> None:
        try:
            while not self.stop.is_set():
                self.max_in_flight = max(self.max_in_flight, self.in_flight(self.sampler_ddb))
                self.samples += 1
                time.sleep(0.02)
        except BaseException as exc:  # surfaced by close()
            self.error = exc

    def release(self, timeout: float = 60) -> None:
        """Let every held execution end (the tokens are answered as they would have been)."""
        self.hold.clear()
        wait_for(lambda: not self.held or not self.thread.is_alive(), timeout=timeout,
                 what="the player to answer its held task tokens",
                 details=lambda: f"{len(self.held)} task token(s) still held; error: {self.error!r}")
        self.check()

    def check(self) -> None:
        if self.error is not None:
            raise self.error

    def close(self) -> None:
        try:
            self.release()
        finally:
            self.stop.set()
            self.thread.join(30)
            if self.sampler.is_alive():
                self.sampler.join(30)
        self.check()


# --------------------------------------------------------------------------- the setup


def _machine_names(sfn: Any) -> list[str]:
    names: list[str] = []
    for page in sfn.get_paginator("list_state_machines").paginate():
        names += [m["name"] for m in page["stateMachines"]]
    return names


def _fresh_suffix(existing: Sequence[str], stem: str, taken: set[str]) -> str:
    """8 random hex digits whose first four no machine named ``<stem>-...`` has yet, so the name
    up to them is a prefix of this machine alone on the module's server."""
    while True:
        suffix = secrets.token_hex(4)
        head = f"{stem}-{suffix[:4]}"
        if suffix not in taken and not any(n.startswith(head) for n in existing):
            return suffix


class PipelineSetup:
    """For one test: the four workflows (callback machines), their player on the test's table,
    the compaction gate's queues, and the CLI's arguments.

    ``token``: put into every machine's name (``line-submit-sf-prod<token>-<hex>``), so that
    ``<role>-sf-prod<token>-`` is a prefix matching exactly one state machine on the module's
    server (:meth:`workflows` ``"prefix"``). ``definitions``: role -> a definition replacing that
    machine's callback one."""

    def __init__(self, table: TableHandle, sfn_url: str, *, claim_receipts: int = 2,
                 ingest_delay: float = 1.0, token: str | None = None,
                 definitions: dict[str, str] | None = None) -> None:
        self.table, self.sfn_url = table, sfn_url
        self.sfn = make_service_client(sfn_url, "stepfunctions")
        self.sqs = make_service_client(sfn_url, "sqs")
        self.token = token if token is not None else ""
        self.tag = uuid.uuid4().hex[:8]
        self.callback_queues = {
            role: self.sqs.create_queue(QueueName=f"cb-{role}-{self.tag}")["QueueUrl"] for role in ROLES
        }
        existing = _machine_names(self.sfn)
        self.names: dict[str, str] = {}
        self.machines: dict[str, str] = {}  # role -> ARN
        suffixes: set[str] = set()
        for role in ROLES:
            suffix = _fresh_suffix(existing, self.stem(role), suffixes)
            suffixes.add(suffix)
            definition = (definitions or {}).get(role) or callback_definition(self.callback_queues[role])
            self.names[role] = f"{self.stem(role)}-{suffix}"
            self.machines[role] = self.sfn.create_state_machine(
                name=self.names[role], definition=definition, roleArn=EMBEDDING_ROLE
            )["stateMachineArn"]
        # the compaction gate
        self.live_queues = {
            name: self.sqs.create_queue(QueueName=name)["QueueUrl"]
            for name in (f"lines-compaction-{self.tag}", f"words-compaction-{self.tag}")
        }
        self.dead_letter_queues = {
            name: self.sqs.create_queue(QueueName=name)["QueueUrl"]
            for name in (f"lines-compaction-dlq-{self.tag}", f"words-compaction-dlq-{self.tag}")
        }
        self.player = Player(table, sfn_url, self.callback_queues,
                             claim_receipts=claim_receipts, ingest_delay=ingest_delay)
        self._threads: list[threading.Thread] = []
        self._thread_errors: list[BaseException] = []
        self._started_by_others: list[str] = []

    def stem(self, role: str) -> str:
        return f"{role}-sf-prod{self.token}"

    # ----------------------------------------------------------------- state machines

    def replace_definition(self, role: str, definition: str | None = None) -> None:
        """Give ``role``'s machine another definition (default: back to its callback one)."""
        definition = definition or callback_definition(self.callback_queues[role])
        self.sfn.update_state_machine(stateMachineArn=self.machines[role], definition=definition)

    def extra_machine(self, role: str, definition: str = PASS_DEFINITION) -> tuple[str, str]:
        """Another state machine whose name starts with ``<role>-sf-prod<token>-`` (name, ARN):
        makes that prefix ambiguous."""
        existing = _machine_names(self.sfn)
        name = f"{self.stem(role)}-{_fresh_suffix(existing, self.stem(role), set())}"
        arn = self.sfn.create_state_machine(name=name, definition=definition, roleArn=EMBEDDING_ROLE)
        return name, arn["stateMachineArn"]

    def workflows(self, style: str = "short") -> list[str]:
        """The four ``--workflow`` values in start order. ``short``: the name up to the suffix's
        first four hex digits (a prefix of that one machine on the module's server); ``prefix``:
        ``<role>-sf-prod<token>-`` (needs a ``token``); ``name``; ``arn``; ``output``:
        ``output:<key>`` of :meth:`prod_config`."""
        out = []
        for role in ROLES:
            name = self.names[role]
            if style == "short":
                out.append(name[: len(self.stem(role)) + 5])
            elif style == "prefix":
                assert self.token, "a prefix of one machine needs a per-test token in the names"
                out.append(f"{self.stem(role)}-")
            elif style == "name":
                out.append(name)
            elif style == "arn":
                out.append(self.machines[role])
            elif style == "output":
                out.append(f"output:{output_key(role)}")
            else:
                raise ValueError(style)
        return out

    def prod_config(self, path: Path) -> Path:
        """A prod.json like ``pulumi stack output --json``: the table and the four machines' ARNs."""
        outputs = {"dynamodb_table_name": self.table.name,
                   **{output_key(role): self.machines[role] for role in ROLES}}
        path.write_text(json.dumps(outputs, indent=2), encoding="utf-8")
        return path

    def start_other(self, role: str) -> str:
        """Start an execution of ``role``'s machine as someone else would (not named like the
        tool's); returns its ARN. It runs until the player answers it."""
        name = f"someone-else-{uuid.uuid4().hex[:12]}"
        arn: str = self.sfn.start_execution(stateMachineArn=self.machines[role], name=name,
                                            input="{}")["executionArn"]
        self._started_by_others.append(arn)
        return arn

    def executions(self, role: str | None = None) -> dict[str, list[dict[str, Any]]]:
        """Every execution of every machine (or of ``role``'s), described (start and stop dates),
        by role, in start order."""
        out: dict[str, list[dict[str, Any]]] = {}
        for r in ROLES if role is None else (role,):
            runs = []
            for page in self.sfn.get_paginator("list_executions").paginate(stateMachineArn=self.machines[r]):
                runs += [self.sfn.describe_execution(executionArn=e["executionArn"])
                         for e in page["executions"]]
            out[r] = sorted(runs, key=lambda e: e["startDate"])
        return out

    def tool_executions(self) -> dict[str, list[dict[str, Any]]]:
        """The executions the tool started (named ``copy-dev-to-prod-NNNNNN``), by role."""
        return {role: [e for e in runs if EXECUTION_NAME_RE.fullmatch(e["name"])]
                for role, runs in self.executions().items()}

    def wait_all_ended(self, timeout: float = 60) -> dict[str, list[dict[str, Any]]]:
        """Wait until no execution of the four machines is RUNNING; returns them all."""
        last: list[dict[str, list[dict[str, Any]]]] = []

        def ended() -> bool:
            last[:] = [self.executions()]
            return all(e["status"] != "RUNNING" for runs in last[0].values() for e in runs)

        wait_for(ended, timeout=timeout, interval=0.2, what="every execution of the four workflows to end",
                 details=lambda: _describe_runs(last[0] if last else {}))
        return last[0]

    def no_overlaps(self) -> dict[str, list[dict[str, Any]]]:
        """Assert that every execution has ended and that no two executions of one state machine
        ran at the same time ([start, stop] intervals disjoint). Returns the executions."""
        runs = self.executions()
        for role, ones in runs.items():
            running = [e["executionArn"] for e in ones if "stopDate" not in e]
            assert not running, f"{role}: executions still running: {running}"
            for a, b in itertools.pairwise(ones):
                assert b["startDate"] >= a["stopDate"], (
                    f"{role}: {b['name']} started at {b['startDate']} while {a['name']} ran "
                    f"({a['startDate']} .. {a['stopDate']})\n{_describe_runs(runs)}"
                )
        return runs

    # ----------------------------------------------------------------- queues of the gate

    def queue_url(self, name: str) -> str:
        return {**self.live_queues, **self.dead_letter_queues}[name]

    def put_messages(self, name: str, count: int) -> None:
        url = self.queue_url(name)
        for n in range(count):
            self.sqs.send_message(QueueUrl=url, MessageBody=json.dumps({"compaction": n}))

    def depth(self, name: str) -> int:
        """Messages in the queue: visible plus in flight."""
        attributes = self.sqs.get_queue_attributes(
            QueueUrl=self.queue_url(name),
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )["Attributes"]
        return sum(int(attributes[a]) for a in ("ApproximateNumberOfMessages",
                                                "ApproximateNumberOfMessagesNotVisible"))

    def drain(self, name: str, timeout: float = 30) -> None:
        """Receive and delete every message of the queue (as the compactor does)."""
        url = self.queue_url(name)

        def empty() -> bool:
            for m in self.sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages", []):
                self.sqs.delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])
            return self.depth(name) == 0

        wait_for(empty, timeout=timeout, what=f"queue {name} to be drained")

    def later(self, delay: float, action: Callable[[], Any]) -> threading.Thread:
        """Run ``action`` in a test thread after ``delay`` seconds; its error is raised by close()."""

        def run() -> None:
            try:
                time.sleep(delay)
                action()
            except BaseException as exc:
                self._thread_errors.append(exc)

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        self._threads.append(thread)
        return thread

    def drain_later(self, name: str, delay: float) -> threading.Thread:
        return self.later(delay, lambda: self.drain(name))

    def gate_args(self, *, live: bool = True, dead_letter: bool = True, max_depth: int | None = None,
                  urls: bool = False) -> list[str]:
        """``--queue``/``--dead-letter-queue`` for the gate queues (names, or URLs)."""
        out: list[str] = []
        if live:
            for name, url in self.live_queues.items():
                out += ["--queue", url if urls else name]
        if dead_letter:
            for name, url in self.dead_letter_queues.items():
                out += ["--dead-letter-queue", url if urls else name]
        if max_depth is not None:
            out += ["--max-queue-depth", str(max_depth)]
        return out

    # ----------------------------------------------------------------- the CLI

    def args(self, export: Path, *extra: Any, workflows: Sequence[str] | None = None, dry_run: bool = False,
             ddb_url: str | None = None, sfn_url: str | None = None, sqs_url: str | None = None) -> list[str]:
        """A live, unattended run (``dry_run``: the dry run) of ``export`` into the table with the
        four workflows (default :meth:`workflows` ``"short"``); ``*_url`` replace an endpoint
        (e.g. by a :class:`Cutoff`'s)."""
        out = [
            *(["--dry-run"] if dry_run else ["--no-dry-run", "--yes"]),
            "--no-progress",
            "--table", self.table.name,
            "--endpoint-url", ddb_url or self.table.url,
            "--sfn-endpoint-url", sfn_url or self.sfn_url,
            "--sqs-endpoint-url", sqs_url or self.sfn_url,
            "--region", REGION,
            "--export-dir", str(export),
            *BUCKET_FLAGS,
        ]
        for workflow in self.workflows() if workflows is None else workflows:
            out += ["--workflow", workflow]
        return [*out, *map(str, extra)]

    # ----------------------------------------------------------------- the table

    def items(self) -> dict[Key, Item]:
        return table_items(self.table.client, self.table.name)

    def rows(self) -> dict[Key, Item]:
        """The table's receipt lines and words."""
        return {k: i for k, i in self.items().items() if i["TYPE"]["S"] in ROW_TYPES}

    def states(self, keys: Iterable[Key] | None = None) -> dict[str, set[Key]]:
        """Receipt lines and words (of ``keys``, default all) by ``embedding_status``; asserts
        that every row's GSI1PK agrees with its status."""
        rows = self.rows()
        wanted = set(rows) if keys is None else set(keys)
        out: dict[str, set[Key]] = {}
        for key in wanted:
            item = rows.get(key)
            status = "MISSING" if item is None else item["embedding_status"]["S"]
            if item is not None:
                assert item["GSI1PK"]["S"] == status_pk(status), (key, item["GSI1PK"], status)
            out.setdefault(status, set()).add(key)
        return out

    def close(self) -> None:
        try:
            for thread in self._threads:
                thread.join(60)
            self.player.close()
        finally:
            if self._thread_errors:
                raise self._thread_errors[0]


def _describe_runs(runs: dict[str, list[dict[str, Any]]]) -> str:
    return "\n".join(
        f"  {role}: {e['name']} {e['status']} {e['startDate']} .. {e.get('stopDate')}"
        for role, ones in runs.items() for e in ones
    )


def execution_numbers(runs: Iterable[dict[str, Any]]) -> list[int]:
    """The turn numbers of the tool's executions (``copy-dev-to-prod-NNNNNN``), sorted; fails on
    any other name."""
    out = []
    for e in runs:
        m = EXECUTION_NAME_RE.fullmatch(e["name"])
        assert m, f"not a name the tool gives: {e['name']!r}"
        out.append(int(m[1]))
    return sorted(out)


# --------------------------------------------------------------------------- exports


@dataclass
class Export:
    """An export directory of cloned golden images with noise rows marked, and what it becomes."""

    path: Path
    ids: list[str]  # sorted, as the tool orders the files
    expected: dict[Key, Item]  # every item the tool writes (keys and types; noise rows flagged)
    noise: set[Key] = field(default_factory=set)  # receipt lines and words marked is_noise
    rows: dict[str, dict[str, int]] = field(default_factory=dict)  # image -> kind -> non-noise rows

    def row_keys(self, ids: Iterable[str] | None = None) -> set[Key]:
        """Receipt line and word keys (of ``ids``, default all images)."""
        want = set(self.ids if ids is None else ids)
        return {k for k, i in self.expected.items() if i["TYPE"]["S"] in ROW_TYPES and k[0][6:] in want}

    def embeddable(self, ids: Iterable[str] | None = None) -> set[Key]:
        """The rows the pipeline embeds: receipt lines and words that are not noise."""
        return self.row_keys(ids) - self.noise

    def noise_of(self, ids: Iterable[str] | None = None) -> set[Key]:
        return self.row_keys(ids) & self.noise

    def non_noise(self, ids: Iterable[str] | None = None) -> int:
        return len(self.embeddable(ids))

    def add(self, other: Export) -> Export:
        """This export and ``other`` (written into the same directory) as one."""
        assert other.path == self.path and not set(other.ids) & set(self.ids)
        return Export(path=self.path, ids=sorted(self.ids + other.ids),
                      expected={**self.expected, **other.expected},
                      noise=self.noise | other.noise, rows={**self.rows, **other.rows})


def line_key(image_id: str, entry: dict[str, Any]) -> Key:
    return f"IMAGE#{image_id}", f"RECEIPT#{entry['receipt_id']:05d}#LINE#{entry['line_id']:05d}"


def word_key(image_id: str, entry: dict[str, Any]) -> Key:
    pk, sk = line_key(image_id, entry)
    return pk, f"{sk}#WORD#{entry['word_id']:05d}"


def make_export(dst: Path, count: int, *, sources: Sequence[str] | None = None,
                ids: Sequence[str] | None = None, noise_lines: int = 1, noise_words: int = 3,
                noise_receipts: Sequence[int] = ()) -> Export:
    """``count`` golden images (``sources``, cycled; default all five) cloned under new random
    ids (or ``ids``), each with its first ``noise_lines`` receipt lines and last ``noise_words``
    receipt words marked ``"is_noise": true``, and every line and word of the receipts numbered
    in ``noise_receipts`` too."""
    sources = list(sources or GOLDEN_IDS)
    export = Export(path=dst, ids=[], expected={})
    for n in range(count):
        source = sources[n % len(sources)]
        new_id = ids[n] if ids is not None else str(uuid.uuid4())
        data = clone_export(source, new_id)
        lines, words = data["receipt_lines"], data["receipt_words"]
        marked = [*lines[:noise_lines], *(words[len(words) - noise_words:] if noise_words else [])]
        marked += [e for e in [*lines, *words] if e["receipt_id"] in noise_receipts]
        noise: set[Key] = set()
        for entry in marked:
            entry["is_noise"] = True
            noise.add(word_key(new_id, entry) if "word_id" in entry else line_key(new_id, entry))
        write_export(dst, data)
        expected = expected_for_clone(source, new_id)
        assert noise <= set(expected), noise - set(expected)
        for key in noise:
            expected[key] = dict(expected[key], is_noise={"BOOL": True})
        export.expected.update(expected)
        export.noise |= noise
        export.ids.append(new_id)
        export.rows[new_id] = {
            kind: sum(1 for k, i in expected.items()
                      if ROW_TYPES.get(i["TYPE"]["S"]) == kind and k not in noise)
            for kind in KINDS
        }
    export.ids.sort()
    return export


def shard_of(image_id: str, shards: int) -> int:
    """The shard of an image as the README describes --shard (CRC-32 of the lower-case id)."""
    return zlib.crc32(image_id.lower().encode("utf-8")) % shards


def ids_for_shards(per_shard: int, shards: int = 2) -> list[str]:
    """Random image ids, ``per_shard`` of each shard."""
    buckets: dict[int, list[str]] = {k: [] for k in range(shards)}
    while any(len(b) < per_shard for b in buckets.values()):
        image_id = str(uuid.uuid4())
        bucket = buckets[shard_of(image_id, shards)]
        if len(bucket) < per_shard:
            bucket.append(image_id)
    return [i for b in buckets.values() for i in b]


# --------------------------------------------------------------------------- a network to cut


class Cutoff:
    """A TCP forwarder: ``url`` (127.0.0.1, a free port) forwards to ``upstream_url`` until
    :meth:`cut`, which closes every open connection and refuses new ones (the listening socket
    is closed): a network outage starting at the moment the test chooses."""

    def __init__(self, upstream_url: str) -> None:
        parts = urlsplit(upstream_url)
        assert parts.hostname in ("127.0.0.1", "localhost"), upstream_url
        self.upstream = ("127.0.0.1", parts.port or 80)
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.listener.settimeout(0.1)
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.lock = threading.Lock()
        self.open: set[socket.socket] = set()
        self.connections = 0
        self.is_cut = threading.Event()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while not self.is_cut.is_set():
            try:
                client, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return  # the listener was closed: cut
            client.settimeout(None)
            try:
                upstream = socket.create_connection(self.upstream, timeout=5)
                upstream.settimeout(None)
            except OSError:
                _close(client)
                continue
            with self.lock:
                if self.is_cut.is_set():
                    _close(client)
                    _close(upstream)
                    continue
                self.open |= {client, upstream}
                self.connections += 1
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            with self.lock:
                self.open -= {src, dst}
            _close(src)
            _close(dst)

    def cut(self) -> None:
        """From now on: no connection through (open ones closed, new ones refused)."""
        with self.lock:
            self.is_cut.set()
            _close(self.listener)
            for s in list(self.open):
                _close(s)
            self.open.clear()
        self.thread.join(5)

    def close(self) -> None:
        if not self.is_cut.is_set():
            self.cut()


def _close(s: socket.socket) -> None:
    try:
        s.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    s.close()


# --------------------------------------------------------------------------- running the CLI


def tool_env() -> dict[str, str]:
    return env_for_subprocess(base={**os.environ, **POLL_ENV})


@dataclass
class Finished:
    """What a run of the tool left."""

    code: int
    stdout: str
    stderr: str
    report: dict[str, Any] | None

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    def describe(self) -> str:
        return (f"exit {self.code}\n--- stdout ---\n{self.stdout[-6000:]}"
                f"\n--- stderr ---\n{self.stderr[-6000:]}")


def _read_report(report: Path | None) -> dict[str, Any] | None:
    if report is None or not report.exists():
        return None
    data: dict[str, Any] = json.loads(report.read_text(encoding="utf-8"))
    return data


def run_tool(args: Sequence[str], report: Path | None = None, timeout: float = 240) -> Finished:
    """Run the tool (``--report report`` added; an old file removed first) and wait for it."""
    args = list(args)
    if report is not None:
        report.unlink(missing_ok=True)
        args += ["--report", str(report)]
    proc = subprocess.run([sys.executable, str(TOOL), *args], env=tool_env(), stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, encoding="utf-8", errors="replace", timeout=timeout)
    return Finished(proc.returncode, proc.stdout, proc.stderr, _read_report(report))


class ToolRun:
    """The tool in the background; stdout and stderr are collected as they come (apart, and
    together in :attr:`output`)."""

    def __init__(self, args: Sequence[str], report: Path | None = None) -> None:
        self.report = report
        args = list(args)
        if report is not None:
            report.unlink(missing_ok=True)
            args += ["--report", str(report)]
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self.lines: list[str] = []
        self.proc = subprocess.Popen([sys.executable, str(TOOL), *args], env=tool_env(),
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, encoding="utf-8", errors="replace")
        self.readers = [
            threading.Thread(target=self._read, args=(self.proc.stdout, self.stdout), daemon=True),
            threading.Thread(target=self._read, args=(self.proc.stderr, self.stderr), daemon=True),
        ]
        for reader in self.readers:
            reader.start()

    def _read(self, stream: Any, into: list[str]) -> None:
        for line in stream:
            into.append(line)
            self.lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def exited(self) -> str | None:
        if self.proc.poll() is None:
            return None
        return f"the tool exited {self.proc.returncode}"

    def wait_until(self, condition: Callable[[], Any], what: str, timeout: float = 120) -> Any:
        """Wait until ``condition()`` holds while the tool runs; fail if it exits first."""
        return wait_for(condition, timeout=timeout, interval=0.1, what=what, give_up=self.exited,
                        details=lambda: self.output[-6000:])

    def wait_for(self, pattern: str, timeout: float = 120) -> re.Match[str]:
        """Wait until the output matches ``pattern`` (a regular expression) while the tool runs."""
        compiled = re.compile(pattern)
        found: re.Match[str] = self.wait_until(lambda: compiled.search(self.output),
                                               f"{pattern!r} in the tool's output", timeout)
        return found

    def signal(self, sig: signal.Signals) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 240) -> Finished:
        code = self.proc.wait(timeout)
        for reader in self.readers:
            reader.join(10)
        return Finished(code, "".join(self.stdout), "".join(self.stderr), _read_report(self.report))

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
