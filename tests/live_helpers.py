"""Helpers shared by the live-run test modules (test_live, test_faults, test_kill, test_safety).

Everything talks to 127.0.0.1 only, with dummy credentials (see ``servers.env_for_subprocess``).
The CLI under test is always run as a subprocess unless a test says otherwise.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
from exports import BUCKET_FLAGS, GOLDEN_EXPECTED, GOLDEN_EXPORT, GOLDEN_IDS, REPO_ROOT, TOOL
from exports import load_expected as load_expected_by_key
from fault_proxy import FaultProxy
from servers import REGION, env_for_subprocess, item_key, items_by_key, scan_all

__all__ = ["BUCKET_FLAGS", "GOLDEN_EXPECTED", "GOLDEN_EXPORT", "REPO_ROOT", "TOOL"]


def golden_image_ids() -> list[str]:
    return list(GOLDEN_IDS)


def load_expected(image_ids: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """The golden items (low-level JSON), for all images or the given ones."""
    return list(load_expected_by_key(image_ids).values())


def expected_by_image() -> dict[str, dict[tuple[str, str], dict[str, Any]]]:
    return {image_id: items_by_key(load_expected([image_id])) for image_id in golden_image_ids()}


def live_args(table: str, url: str, export_dir: Path = GOLDEN_EXPORT, *extra: str) -> list[str]:
    return [
        "--no-dry-run",
        "--yes",
        "--table",
        table,
        "--endpoint-url",
        url,
        "--region",
        REGION,
        "--export-dir",
        str(export_dir),
        *BUCKET_FLAGS,
        "--no-progress",
        *extra,
    ]


@dataclass
class CliResult:
    returncode: int
    stdout: str
    stderr: str
    seconds: float
    report: dict[str, Any] | None

    def describe(self) -> str:
        return (
            f"exit {self.returncode} after {self.seconds:.1f}s\n--- stdout ---\n{self.stdout[-4000:]}"
            f"\n--- stderr ---\n{self.stderr[-4000:]}"
        )


def run_cli(
    args: Sequence[str],
    *,
    report: Path | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 120,
    stdin: Any = subprocess.DEVNULL,
) -> CliResult:
    """Run the tool as a subprocess (dummy credentials); read the JSON report if asked for."""
    cmd = [sys.executable, str(TOOL), *args]
    if report is not None:
        if report.exists():
            report.unlink()
        cmd += ["--report", str(report)]
    start = time.monotonic()
    proc = subprocess.run(
        cmd,
        env=env if env is not None else env_for_subprocess(),
        stdin=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO_ROOT,
    )
    seconds = time.monotonic() - start
    data = json.loads(report.read_text(encoding="utf-8")) if report is not None and report.exists() else None
    return CliResult(proc.returncode, proc.stdout, proc.stderr, seconds, data)


def moto_backend_items(table: str) -> list[dict[str, Any]] | None:
    """Every item of ``table`` read straight from the in-process moto backend (the session's
    ThreadedMotoServer runs in this process), or None if it is not there.

    A Scan through moto deep-copies every item and takes ~1.5 ms per item; the golden x4 tables
    would need ~5 s per scan. test_live checks that this reader agrees with a real Scan.
    """
    try:
        from moto.core import DEFAULT_ACCOUNT_ID
        from moto.dynamodb.models import dynamodb_backends

        backend = dynamodb_backends[DEFAULT_ACCOUNT_ID][REGION]
        if table not in backend.tables:
            return None
        for _ in range(20):
            try:
                items = [item.to_json()["Attributes"] for item in backend.tables[table].all_items()]
            except RuntimeError:  # changed size during iteration: a writer is still running
                time.sleep(0.01)
                continue
            return json.loads(json.dumps(items))  # detached plain JSON, as a Scan returns it
    except Exception:
        return None
    return None


def item_count(client: Any, table: str) -> int:
    """How many items the table holds (cheap on the in-process moto backend)."""
    try:
        from moto.core import DEFAULT_ACCOUNT_ID
        from moto.dynamodb.models import dynamodb_backends

        backend = dynamodb_backends[DEFAULT_ACCOUNT_ID][REGION]
        if table in backend.tables:
            for _ in range(20):
                try:
                    return sum(len(v) for v in list(backend.tables[table].items.values()))
                except RuntimeError:
                    time.sleep(0.005)
    except Exception:
        pass
    return len(scan_all(client, table))


def all_items(client: Any, table: str) -> list[dict[str, Any]]:
    fast = moto_backend_items(table)
    return fast if fast is not None else scan_all(client, table)


def table_items(client: Any, table: str) -> dict[tuple[str, str], dict[str, Any]]:
    return items_by_key(all_items(client, table))


def assert_table_equals(client: Any, table: str, expected: list[dict[str, Any]]) -> None:
    """The table holds exactly these items: same keys, each item identical (N text included)."""
    actual = table_items(client, table)
    wanted = items_by_key(expected)
    missing = sorted(set(wanted) - set(actual))
    extra = sorted(set(actual) - set(wanted))
    assert not missing, f"{len(missing)} expected items missing, e.g. {missing[:5]}"
    assert not extra, f"{len(extra)} unexpected items in the table, e.g. {extra[:5]}"
    differing = [k for k in wanted if actual[k] != wanted[k]]
    if differing:
        k = differing[0]
        names = sorted(n for n in set(actual[k]) | set(wanted[k]) if actual[k].get(n) != wanted[k].get(n))
        raise AssertionError(
            f"{len(differing)} items differ, e.g. {k}: attributes {names}: "
            f"table {[actual[k].get(n) for n in names]} vs expected {[wanted[k].get(n) for n in names]}"
        )


def incomplete_marked_images(client: Any, table: str,
                             expected: Sequence[dict[str, Any]] | None = None) -> list[str]:
    """Images whose IMAGE item exists although some of their expected items are missing or wrong
    (a violation of the IMAGE-last invariant)."""
    actual = table_items(client, table)
    bad = []
    groups = expected_by_image() if expected is None else expected_by_image_of(expected)
    for image_id, wanted in groups.items():
        if (f"IMAGE#{image_id}", "IMAGE") not in actual:
            continue
        if any(actual.get(k) != item for k, item in wanted.items()):
            bad.append(image_id)
    return bad


def image_items_present(client: Any, table: str) -> set[str]:
    return {pk[len("IMAGE#") :] for pk, sk in table_items(client, table) if sk == "IMAGE"}


def count_by_type(items: Sequence[dict[str, Any]]) -> Counter[str]:
    return Counter(i["TYPE"]["S"] for i in items)


# --------------------------------------------------------------------------- streams


def stream_records(url: str, client: Any, table: str) -> list[dict[str, Any]]:
    """Every record of the table's stream (all shards, from TRIM_HORIZON)."""
    arn = client.describe_table(TableName=table)["Table"]["LatestStreamArn"]
    streams = boto3.session.Session(
        aws_access_key_id="testing", aws_secret_access_key="testing", region_name=REGION
    ).client("dynamodbstreams", endpoint_url=url)
    records: list[dict[str, Any]] = []
    for shard in streams.describe_stream(StreamArn=arn)["StreamDescription"]["Shards"]:
        iterator = streams.get_shard_iterator(
            StreamArn=arn, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON"
        )["ShardIterator"]
        for _ in range(1000):
            page = streams.get_records(ShardIterator=iterator, Limit=1000)
            records.extend(page.get("Records", []))
            iterator = page.get("NextShardIterator")
            if not page.get("Records") or not iterator:
                break
    return records


def record_key(record: dict[str, Any]) -> tuple[str, str]:
    keys = record["dynamodb"]["Keys"]
    return keys["PK"]["S"], keys["SK"]["S"]


# --------------------------------------------------------------------------- recording proxy


class RecordingProxy(FaultProxy):
    """A FaultProxy that also keeps every request body it receives, in arrival order.

    Uses the proxy's decision hook (which sees each call exactly once, on arrival) and changes
    nothing else; at rate 0 it is a pure pass-through recorder.
    """

    def __init__(self, upstream_url: str, **kwargs: Any) -> None:
        self.requests: list[tuple[str, dict[str, Any]]] = []
        super().__init__(upstream_url, **kwargs)

    def _choose(self, operation: str, body: bytes) -> str | None:
        fault = super()._choose(operation, body)
        try:
            payload = json.loads(body) if body else {}
        except ValueError:
            payload = {"_raw": body.decode("utf-8", "replace")}
        with self._lock:
            self.requests.append((operation, payload))
        return fault

    def batch_writes(self) -> list[list[dict[str, Any]]]:
        """The items of every BatchWriteItem received (all tables), in arrival order."""
        out = []
        for operation, payload in list(self.requests):
            if operation == "BatchWriteItem":
                out.append(
                    [
                        req["PutRequest"]["Item"]
                        for reqs in payload["RequestItems"].values()
                        for req in reqs
                        if "PutRequest" in req
                    ]
                )
        return out


def check_write_requests(batches: list[list[dict[str, Any]]]) -> list[str]:
    """Problems in a sequence of BatchWriteItem requests: > 25 puts, duplicate keys, or an
    IMAGE item sent before (or together with) another item of its image."""
    problems = []
    last_other: dict[str, int] = {}
    first_image: dict[str, int] = {}
    for n, items in enumerate(batches):
        keys = [item_key(i) for i in items]
        if len(items) > 25:
            problems.append(f"request {n} holds {len(items)} puts")
        if len(set(keys)) != len(keys):
            problems.append(
                f"request {n} holds duplicate keys {[k for k, c in Counter(keys).items() if c > 1]}"
            )
        for pk, sk in keys:
            image_id = pk[len("IMAGE#") :]
            if sk == "IMAGE":
                first_image.setdefault(image_id, n)
            else:
                last_other[image_id] = n
    for image_id, n in first_image.items():
        if image_id in last_other and last_other[image_id] >= n:
            problems.append(
                f"IMAGE item of {image_id} sent in request {n}, but another item of it "
                f"was sent in request {last_other[image_id]}"
            )
    return problems


# --------------------------------------------------------------------------- larger exports


def multiplied_export(dest: Path, copies: int) -> tuple[Path, list[dict[str, Any]]]:
    """The golden export ``copies`` times, each copy under fresh image ids (a plain text
    substitution of the image UUID in both the export and the expected items), so runs have
    more requests. Returns (export dir, expected items). Deterministic ids."""
    export_dir = dest / "export"
    export_dir.mkdir(parents=True, exist_ok=True)
    expected: list[dict[str, Any]] = []
    for copy in range(copies):
        for image_id in golden_image_ids():
            new_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"copy-{copy}-{image_id}")) if copy else image_id
            text = (GOLDEN_EXPORT / f"{image_id}.json").read_text(encoding="utf-8")
            (export_dir / f"{new_id}.json").write_text(text.replace(image_id, new_id), encoding="utf-8")
            lines = (GOLDEN_EXPECTED / f"{image_id}.jsonl").read_text(encoding="utf-8")
            expected.extend(json.loads(line) for line in lines.replace(image_id, new_id).splitlines() if line)
    return export_dir, expected


def expected_by_image_of(items: Sequence[dict[str, Any]]) -> dict[str, dict[tuple[str, str], dict[str, Any]]]:
    out: dict[str, dict[tuple[str, str], dict[str, Any]]] = {}
    for i in items:
        out.setdefault(i["PK"]["S"][len("IMAGE#"):], {})[item_key(i)] = i
    return out
