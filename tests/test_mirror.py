"""--mirror, --delete-missing, --protect, --journal and --undo on DynamoDB Local with a stream
(issue 21): a prod that an older OCR left (tests/mirror_scenario.py says what it holds) is made
exactly the source, item for item; the dry run is the live run's exact plan; a second run
changes nothing; a run killed during its deletes converges when run again; the journal puts the
table back as it was scanned before the run, and a damaged or foreign journal is refused.

One DynamoDB Local process for the module (started here), a fresh table for every test. Every
test judges what the table holds, item by item, and the stream records per key.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cli import BUCKET_FLAGS, CliResult, kill_9, kill_if_running, run_cli, tool_command
from conftest import TableHandle, new_table_name
from fault_proxy import FaultProxy
from items import Item, Key, assert_items_equal, canonical_item, item_key, stream_records, table_items
from mirror_scenario import (
    IMG_A,
    IMG_G,
    IMG_N,
    IMG_P,
    IMG_U,
    SOURCE_IDS,
    WRITTEN_TYPES,
    Scenario,
    action_line,
    build_scenario,
    events_by_key,
    expected_events,
    mirror_oracle,
    new_records,
    of_image,
    pk,
    sent_writes,
    sequence_numbers,
    status_of,
    type_of,
    undo_args,
    with_status,
)
from servers import (
    DDBLocalServer,
    create_table,
    ddblocal_unavailable_reason,
    env_for_subprocess,
    make_client,
    start_ddblocal,
)
from waiting import wait_for

#: The report's item counts the dry run must give as the live run does.
PLAN_COUNTS = ("to_write", "to_delete", "unchanged", "prod_progress_kept")


@pytest.fixture(scope="module")
def server() -> Iterator[DDBLocalServer]:
    """This module's own DynamoDB Local (its tables do not crowd the session's)."""
    reason = ddblocal_unavailable_reason()
    if reason:
        if os.environ.get("REQUIRE_DDBLOCAL"):
            pytest.fail(f"REQUIRE_DDBLOCAL is set but {reason}")
        pytest.skip(reason)
    with start_ddblocal() as ddblocal:
        yield ddblocal


def fresh_table(server: DDBLocalServer) -> TableHandle:
    client = make_client(server.url)
    name = new_table_name("receipts-mirror")
    create_table(client, name)
    return TableHandle(name=name, url=server.url, client=client, server=server)


@dataclass
class Prod:
    """A table prepared as the scenario says, and what it held before any run."""

    table: TableHandle
    sc: Scenario
    before: dict[Key, Item]   # the table as scanned before the run
    seen: set[str]            # the stream's sequence numbers before the run
    tmp: Path

    def scan(self) -> dict[Key, Item]:
        return table_items(self.table.client, self.table.name)

    def records_since(self, seen: set[str]) -> list[dict[str, Any]]:
        return new_records(self.table.url, self.table.client, self.table.name, seen)

    def stream_seen(self) -> set[str]:
        return sequence_numbers(stream_records(self.table.url, self.table.client, self.table.name))

    def mirror(self, name: str, *extra: str, live: bool = True, url: str | None = None,
               journal: Path | None = None) -> CliResult:
        """The mirror of the scenario (journal: ``tmp/journal.jsonl`` unless given)."""
        journal = journal or self.tmp / "journal.jsonl"
        args = self.sc.args(self.table.name, url or self.table.url, "--journal", str(journal), *extra,
                            live=live)
        return run_cli(args, report=self.tmp / f"{name}.json")

    def undo(self, name: str, journal: Path, *extra: str, live: bool = True, table: str | None = None,
             url: str | None = None) -> CliResult:
        return run_cli(undo_args(table or self.table.name, url or self.table.url, journal, *extra, live=live),
                       report=self.tmp / f"{name}.json")


@pytest.fixture
def prod(server: DDBLocalServer, tmp_path: Path) -> Prod:
    table = fresh_table(server)
    sc = build_scenario(tmp_path, table.client, table.name)
    before = table_items(table.client, table.name)
    assert_items_equal(before, sc.prod, exact_numbers=False)
    seen = sequence_numbers(stream_records(table.url, table.client, table.name))
    assert len(seen) == len(sc.prod)
    return Prod(table=table, sc=sc, before=before, seen=seen, tmp=tmp_path)


# --------------------------------------------------------------------------- helpers


def ok(result: CliResult, code: int = 0) -> dict[str, Any]:
    assert result.returncode == code, result.describe()
    assert "Traceback" not in result.output, result.describe()
    assert result.report is not None, result.describe()
    return result.report


def one_error_line(result: CliResult) -> str:
    """Exit 2 with exactly one line on stderr, an ``error:`` line."""
    assert result.returncode == 2, result.describe()
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.describe()
    assert "Traceback" not in result.output
    return lines[0]


def assert_table(p: Prod, expected: dict[Key, Item]) -> dict[Key, Item]:
    """The table holds exactly ``expected`` (numbers as decimals); returns the scan."""
    items = p.scan()
    assert_items_equal(items, expected, exact_numbers=False)
    return items


def assert_events(records: list[dict[str, Any]], before: dict[Key, Item], after: dict[Key, Item]) -> None:
    """The stream records are exactly one per changed key, of the right kind, with the old and
    new images of ``before`` and ``after``; nothing for an equal item."""
    got = events_by_key(records)
    want = {k: [e] for k, e in expected_events(before, after).items()}
    wrong = sorted(k for k in set(got) | set(want) if got.get(k) != want.get(k))
    assert not wrong, f"{len(wrong)} key(s) with other stream records than expected, e.g. " + "; ".join(
        f"{k}: got {got.get(k)} want {want.get(k)}" for k in wrong[:8])
    for record in records:
        key = item_key(record["dynamodb"]["Keys"])
        if "NewImage" in record["dynamodb"]:
            assert canonical_item(record["dynamodb"]["NewImage"]) == canonical_item(after[key]), key
        if "OldImage" in record["dynamodb"]:
            assert canonical_item(record["dynamodb"]["OldImage"]) == canonical_item(before[key]), key


def actions_of(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The report's actions by image id (each image once), counts as the oracle has them."""
    actions = report["actions"]
    by_id = {a["image_id"]: a for a in actions}
    assert len(by_id) == len(actions), actions
    counts = ("put", "delete", "unchanged")
    return {i: {"image_id": i, "action": a["action"], **{n: a.get(n, 0) for n in counts}}
            for i, a in by_id.items()}


def check_plan(report: dict[str, Any], stdout: str, sc: Scenario) -> None:
    """The report's and the output's plan is the oracle's."""
    assert actions_of(report) == sc.actions
    lines = stdout.splitlines()
    for action in sc.actions.values():
        naming = [line for line in lines if action["image_id"] in line]
        assert action_line(action) in lines, \
            f"no line {action_line(action)!r} in the output; the lines naming the image: {naming}"
    items = report["items"]
    assert items["to_write"] == sum(a["put"] for a in sc.actions.values()) == len(sc.to_put())
    assert items["to_delete"] == sum(a["delete"] for a in sc.actions.values()) == len(sc.to_delete())
    assert items["prod_progress_kept"] == sc.prod_progress
    left_alone = sum(a["unchanged"] for a in sc.actions.values())
    assert items["unchanged"] + items["prod_progress_kept"] == left_alone, items
    assert report["prod_other_types"] == dict(sc.other_types)
    assert report["images"]["deleted"] == 1 and report["images"]["protected"] == 1, report["images"]


def present_keys(p: Prod, image_ids: tuple[str, ...]) -> set[Key]:
    """The keys of these images' partitions now (consistent Queries)."""
    keys: set[Key] = set()
    for image_id in image_ids:
        kwargs: dict[str, Any] = {"TableName": p.table.name, "ConsistentRead": True,
                                  "KeyConditionExpression": "PK = :pk",
                                  "ExpressionAttributeValues": {":pk": {"S": pk(image_id)}},
                                  "ProjectionExpression": "PK, SK"}
        while True:
            page = p.table.client.query(**kwargs)
            keys.update(item_key(i) for i in page.get("Items", []))
            if not page.get("LastEvaluatedKey"):
                break
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]
    return keys


# --------------------------------------------------------------------------- 1. the dry run is the plan


def test_dry_run_is_the_exact_plan_of_the_live_run(prod: Prod) -> None:
    sc, journal = prod.sc, prod.tmp / "journal.jsonl"
    proxy = FaultProxy(prod.table.url, rate=0.0)  # passes everything on, records every request
    try:
        dry = prod.mirror("dry", live=False, url=proxy.url)
        dry_sent = sent_writes(proxy)
    finally:
        proxy.stop()
    report = ok(dry)
    assert not dry_sent, f"the dry run sent writes: {sorted(dry_sent)[:5]}"
    assert_table(prod, prod.before)
    assert prod.records_since(prod.seen) == [], "the dry run wrote to the table"
    assert not journal.exists(), "a dry run writes no journal"
    assert report["journal"] is None
    assert report["items"]["written"] == 0 and report["items"]["deleted"] == 0
    check_plan(report, dry.stdout, sc)

    live = prod.mirror("live")
    live_report = ok(live)
    check_plan(live_report, live.stdout, sc)
    for name in PLAN_COUNTS:
        assert live_report["items"][name] == report["items"][name], \
            (name, report["items"], live_report["items"])
    assert live_report["actions"] == report["actions"], "the live run's actions are not the dry run's"
    assert live_report["prod_other_types"] == report["prod_other_types"]
    for name in ("deleted", "protected"):
        assert live_report["images"][name] == report["images"][name], (name, live_report["images"])
    assert live_report["items"]["written"] == live_report["items"]["to_write"]
    assert live_report["items"]["deleted"] == live_report["items"]["to_delete"]
    assert journal.is_file() and live_report["journal"] is not None
    assert Path(live_report["journal"]).resolve() == journal.resolve()
    assert_table(prod, sc.expected)


# --------------------------------------------------------------------------- 2. the live mirror


def test_live_mirror_makes_prod_the_source_and_streams_only_the_differences(prod: Prod) -> None:
    sc = prod.sc
    proxy = FaultProxy(prod.table.url, rate=0.0)
    try:
        # no --journal: a live destructive run keeps one anyway, next to the report
        args = sc.args(prod.table.name, proxy.url)
        result = run_cli(args, report=prod.tmp / "live.json")
        sent = sent_writes(proxy)
    finally:
        proxy.stop()
    report = ok(result)
    journal = Path(report["journal"])
    journal = journal if journal.is_absolute() else Path(__file__).resolve().parent.parent / journal
    assert journal.is_file() and journal.parent == prod.tmp, report["journal"]

    after = assert_table(prod, sc.expected)
    # equal lines and words keep the pipeline's SUCCESS; a changed one is written NONE
    assert {k: status_of(after[k]) for k in sc.kept_success} == {k: "SUCCESS" for k in sc.kept_success}
    assert status_of(after[sc.changed_word]) == "NONE"
    assert after[sc.changed_word]["text"] == sc.source[sc.changed_word]["text"]
    # other types untouched, and counted
    assert {k: canonical_item(after[k]) for k in sc.others} == \
        {k: canonical_item(v) for k, v in sc.others.items()}
    assert report["prod_other_types"] == dict(sc.other_types)
    # the protected image as prod had it; the gone image's written kinds gone, its other items kept
    assert of_image(after, IMG_P) == of_image(prod.before, IMG_P)
    assert set(of_image(after, IMG_G)) == {k for k in sc.others if k[0] == pk(IMG_G)}
    check_plan(report, result.stdout, sc)
    assert report["items"]["written"] == len(sc.to_put())
    assert report["items"]["deleted"] == len(sc.to_delete())

    records = prod.records_since(prod.seen)
    assert_events(records, prod.before, after)
    # nothing sent for an equal item (DynamoDB drops a record for a put that changes nothing:
    # the requests say what was sent)
    changed = set(expected_events(prod.before, after))
    extra, never = sorted(set(sent) - changed), sorted(changed - set(sent))
    assert not extra and not never, \
        f"sent for {len(extra)} equal item(s), e.g. {extra[:5]}; never sent: {never[:5]}"
    # inside the deleted image, its IMAGE item goes last
    g_removes = {record_key_seq(r) for r in records if r["dynamodb"]["Keys"]["PK"]["S"] == pk(IMG_G)}
    image_seq = [seq for key, seq in g_removes if key[1] == "IMAGE"]
    assert len(image_seq) == 1 and image_seq[0] == max(seq for _, seq in g_removes), \
        "the deleted image's IMAGE item was not the last of its items to go"


def record_key_seq(record: dict[str, Any]) -> tuple[Key, int]:
    return item_key(record["dynamodb"]["Keys"]), int(record["dynamodb"]["SequenceNumber"])


# --------------------------------------------------------------------------- 3. idempotent


def test_second_run_writes_and_deletes_nothing(prod: Prod) -> None:
    sc = prod.sc
    ok(prod.mirror("first"))
    assert_table(prod, sc.expected)
    seen = prod.stream_seen()

    proxy = FaultProxy(prod.table.url, rate=0.0)
    try:
        again = prod.mirror("again", url=proxy.url)
        sent = sent_writes(proxy)
    finally:
        proxy.stop()
    report = ok(again)
    items = report["items"]
    assert (items["written"], items["deleted"], items["to_write"], items["to_delete"]) == (0, 0, 0, 0), items
    assert not sent, f"the second run sent writes: {sorted(sent)[:5]}"
    assert prod.records_since(seen) == [], "the second run changed the table"
    assert_table(prod, sc.expected)
    # every source image is now UNCHANGED (the protected one PROTECTED)
    _, want, _ = mirror_oracle(sc.expected, sc.source, protected={IMG_P}, deleted=set())
    got = actions_of(report)
    assert {i: got.get(i) for i in SOURCE_IDS} == {i: want[i] for i in SOURCE_IDS}
    assert {got[i]["action"] for i in (IMG_A, IMG_N, IMG_U)} == {"UNCHANGED"}
    assert all(a["delete"] == 0 and a["put"] == 0 for a in got.values()), got


# --------------------------------------------------------------------------- 4. kill -9


RATE = "100"  # items (puts and deletes) a second: the mirror then takes ~4 s


@pytest.mark.parametrize("fraction", [0.0, 0.6], ids=["first-deletes", "most-deletes"])
def test_kill_during_deletes_then_rerun_converges_and_undo_restores(prod: Prod, fraction: float) -> None:
    """SIGKILL once the first deletes (or 60% of them) are in the table; the same command run
    again makes the table exact; the journal, holding both runs, undoes them both."""
    sc, journal = prod.sc, prod.tmp / "journal.jsonl"
    doomed = sc.to_delete()
    partitions = (IMG_A, IMG_G)
    assert {k[0] for k in doomed} == {pk(i) for i in partitions}
    threshold = max(1, int(len(doomed) * fraction))
    # the runs talk through a pass-through proxy: after the kill, it knows when every request the
    # killed run had sent has reached the engine; the re-run and the undo use the same endpoint
    with FaultProxy(prod.table.url, rate=0.0) as proxy:
        kill_during_deletes(prod, proxy, doomed, partitions, threshold)
        check_killed(prod, doomed, partitions, threshold)
        again = prod.mirror("again", "--max-items-per-second", RATE, "--max-workers", "2", journal=journal,
                            url=proxy.url)
        ok(again)
        after = assert_table(prod, sc.expected)
        assert {k: status_of(after[k]) for k in sc.kept_success} == {k: "SUCCESS" for k in sc.kept_success}

        # the journal holds both runs (appended): undo gives back the table as it was before either
        ok(prod.undo("undo", journal, url=proxy.url))
        assert_table(prod, prod.before)


def kill_during_deletes(prod: Prod, proxy: FaultProxy, doomed: set[Key], partitions: tuple[str, ...],
                        threshold: int) -> None:
    """Start the slowed mirror; SIGKILL it once ``threshold`` of its deletes are in the table."""
    args = prod.sc.args(prod.table.name, proxy.url, "--journal", str(prod.tmp / "journal.jsonl"),
                        "--max-items-per-second", RATE, "--max-workers", "2")
    log_path = prod.tmp / "killed.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(tool_command(args), env=env_for_subprocess(), stdin=subprocess.DEVNULL,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_for(lambda: len(doomed - present_keys(prod, partitions)) >= threshold, timeout=120,
                     interval=0.02, what=f"{threshold} of the mirror's deletes",
                     give_up=lambda: None if proc.poll() is None else "the run ended before the kill",
                     details=lambda: log_path.read_text())
            kill_9(proc)
            proxy.wait_idle()
        finally:
            kill_if_running(proc)


def check_killed(prod: Prod, doomed: set[Key], partitions: tuple[str, ...], threshold: int) -> None:
    """The kill landed during the deletes, and a deleted image lost its IMAGE item last."""
    present = present_keys(prod, partitions)
    gone = doomed - present
    assert len(gone) >= threshold and doomed & present, \
        f"the kill did not land during the deletes ({len(gone)} of {len(doomed)} gone)"
    # children first: a deleted image whose IMAGE item is gone has nothing of the written kinds left
    scan = prod.scan()
    if (pk(IMG_G), "IMAGE") not in scan:
        left = [k for k, v in of_image(scan, IMG_G).items() if type_of(v) in WRITTEN_TYPES]
        assert not left, f"{IMG_G}: IMAGE item deleted before {left[:5]}"


# --------------------------------------------------------------------------- 5. undo


def test_undo_restores_the_table_scanned_before_the_run(prod: Prod) -> None:
    sc, journal = prod.sc, prod.tmp / "journal.jsonl"
    ok(prod.mirror("mirror"))
    after = assert_table(prod, sc.expected)
    changes = expected_events(prod.before, after)
    added = sum(e == "INSERT" for e in changes.values())
    seen = prod.stream_seen()

    dry = ok(prod.undo("undo-dry", journal, live=False))["undo"]
    assert prod.records_since(seen) == [] and prod.scan() == after, "the undo's dry run changed the table"
    assert Path(dry["journal"]).resolve() == journal.resolve()
    assert dry["records"] > 0
    assert (dry["to_restore"], dry["to_delete"]) == (len(changes) - added, added), dry
    assert (dry["restored"], dry["deleted"], dry["conflicts"]) == (0, 0, []), dry

    undone = ok(prod.undo("undo", journal))["undo"]
    assert_table(prod, prod.before)
    assert (undone["restored"], undone["deleted"]) == (dry["to_restore"], dry["to_delete"]), undone
    assert undone["conflicts"] == []
    # the undo's stream: exactly the way back, key by key
    assert_events(prod.records_since(seen), after, prod.before)

    seen = prod.stream_seen()
    second = ok(prod.undo("undo-again", journal))["undo"]
    assert (second["restored"], second["deleted"], second["conflicts"]) == (0, 0, []), second
    assert prod.records_since(seen) == [], "a second undo changed the table"
    assert_table(prod, prod.before)


def test_undo_removes_rows_the_pipeline_moved_and_leaves_changed_items_as_conflicts(prod: Prod) -> None:
    sc, journal = prod.sc, prod.tmp / "journal.jsonl"
    client, name = prod.table.client, prod.table.name
    ok(prod.mirror("mirror"))
    after = assert_table(prod, sc.expected)
    changes = expected_events(prod.before, after)

    def of_kind(event: str, kind: str) -> list[Key]:
        return sorted(k for k, e in changes.items() if e == event and type_of((after if event != "REMOVE"
                                                                               else prod.before)[k]) == kind)

    # the pipeline embeds rows the mirror added (in the new image and in the updated one) and a
    # line it rewrote: its own fields only, so none of them is a conflict
    added_lines = [k for k in of_kind("INSERT", "RECEIPT_LINE") if k[0] == pk(IMG_N)][:2] + \
        [k for k in of_kind("INSERT", "RECEIPT_LINE") if k[0] == pk(IMG_A)][:1]
    rewritten_line = of_kind("MODIFY", "RECEIPT_LINE")[0]
    assert len(added_lines) == 3
    for key in [*added_lines, rewritten_line]:
        client.put_item(TableName=name, Item=with_status(after[key], "SUCCESS"))

    # other changes since the run: an added label, a rewritten word, a deleted label put back
    added_label = of_kind("INSERT", "RECEIPT_WORD_LABEL")[0]
    relabelled = {**after[added_label], "validation_status": {"S": "INVALID"},
                  "GSI3PK": {"S": "VALIDATION_STATUS#INVALID"}}
    edited_word = {**after[sc.changed_word], "text": {"S": "EDITED-AFTER-THE-MIRROR"}}
    deleted_label = of_kind("REMOVE", "RECEIPT_WORD_LABEL")[0]
    recreated = {**prod.before[deleted_label], "reasoning": {"S": "written again after the mirror"}}
    conflicts = {item_key(i): i for i in (relabelled, edited_word, recreated)}
    for item in conflicts.values():
        client.put_item(TableName=name, Item=item)

    result = prod.undo("undo", journal)
    report = ok(result, code=1)["undo"]
    assert {(c["PK"], c["SK"]) for c in report["conflicts"]} == set(conflicts), report["conflicts"]
    assert all(c.get("reason") for c in report["conflicts"]), report["conflicts"]
    # everything back as it was, but the conflicts, which are as they were changed
    assert_table(prod, {**prod.before, **conflicts})


# --------------------------------------------------------------------------- 7. a damaged journal


def test_a_cut_or_foreign_journal_is_refused_and_nothing_applied(prod: Prod, server: DDBLocalServer) -> None:
    journal = prod.tmp / "journal.jsonl"
    mirror = prod.mirror("mirror")
    ok(mirror)
    after = assert_table(prod, prod.sc.expected)
    seen = prod.stream_seen()

    data = journal.read_bytes()
    cut = len(data) // 2
    while data[cut - 1:cut] == b"\n":  # cut mid-line
        cut += 1
    half = prod.tmp / "half.jsonl"
    half.write_bytes(data[:cut])
    report_file = prod.tmp / "report-copy.json"
    shutil.copyfile(prod.tmp / "mirror.json", report_file)

    for name, path in (("half", half), ("report", report_file), ("missing", prod.tmp / "no-such.jsonl")):
        for live in (False, True):
            one_error_line(prod.undo(f"undo-{name}-{live}", path, live=live))
            assert prod.records_since(seen) == [], f"an undo of the {name} journal changed the table"
    assert prod.scan() == after

    other = fresh_table(server)  # the journal of another table
    one_error_line(prod.undo("undo-other", journal, table=other.name))
    assert table_items(other.client, other.name) == {}
    assert prod.records_since(seen) == [] and prod.scan() == after


# --------------------------------------------------------------------------- 8. refused settings


def test_delete_missing_needs_a_complete_source(prod: Prod) -> None:
    sc, table = prod.sc, prod.table
    base = [a for a in sc.args(table.name, table.url)
            if a not in ("--delete-image-ids", str(sc.delete_ids_file))]
    assert "--delete-missing" in base and "--delete-image-ids" not in base
    source_in_prod = prod.tmp / "ids-the-source-has.txt"
    source_in_prod.write_text(f"{IMG_G}\n{IMG_A}\n", encoding="utf-8")
    refused = {
        "export dir, no id list": base,
        "source table with --image-id": [*[a for a in base if a not in ("--export-dir", str(sc.export_dir))],
                                         "--source-table", "receipts-source", "--image-id", IMG_A],
        "an id the source has": [*base, "--delete-image-ids", str(source_in_prod)],
        "--mirror --skip-existing": [*sc.args(table.name, table.url), "--skip-existing"],
    }
    for what, args in refused.items():
        for live in (True, False):
            run = args if live else [a for a in args if a not in ("--no-dry-run", "--yes")]
            result = run_cli(run, cwd=prod.tmp)  # where a default journal would go
            assert result.returncode == 2, (what, result.describe())
            one_error_line(result)
    assert prod.records_since(prod.seen) == []
    assert_table(prod, prod.before)
    assert list(prod.tmp.glob("copy-journal-*")) == [], "a refused run wrote a journal"


def test_a_journal_appended_to_after_a_cut_record_drops_the_cut_line(tmp_path: Path) -> None:
    """A run killed while recording leaves a cut last line (that batch was never sent): the
    next run appending to the same journal drops it, so --undo still reads the whole file."""
    import json

    import copy_dynamodb_dev_to_prod as tool

    path = tmp_path / "j.jsonl"
    first = tool.Journal(path, {"table": "t", "endpoint_url": None})
    first.close()
    whole = path.read_bytes()
    path.write_bytes(whole + b'{"PK": "IMAGE#x", "SK": "LINE#000')  # the cut record
    second = tool.Journal(path, {"table": "t", "endpoint_url": None})
    second.close()
    lines = path.read_bytes().split(b"\n")
    assert lines[-1] == b"" and [json.loads(line)["journal"] for line in lines[:-1]] == [
        tool.JOURNAL_FORMAT, tool.JOURNAL_FORMAT]
    cfg = tool.Config(export_dir=tmp_path, table="t")
    assert tool.read_journal(path, cfg, None) == (2, [])


def test_undo_never_restores_over_a_change_made_between_two_journaled_runs() -> None:
    """One journal, two runs (the same --report): a label X -> Y by run 1, edited to W by
    someone else, then W -> Y by run 2 (sent, or recorded and never sent). prod's W, or run
    2's Y over it, is not run 1's to undo: a conflict, left alone. With nothing in between,
    the chain is undone to X."""
    import copy_dynamodb_dev_to_prod as tool

    def item(text: str) -> dict[str, Any]:
        return {"PK": {"S": "IMAGE#x"}, "SK": {"S": "RECEIPT#00001#LABEL"},
                "TYPE": {"S": "RECEIPT_WORD_LABEL"}, "label": {"S": text}}

    def put(before: str | None, after: str) -> Any:
        return tool.JournalEntry("IMAGE#x", "RECEIPT#00001#LABEL", "put",
                                 item(before) if before else None, tool.item_digest(item(after)))

    between = [put("X", "Y"), put("W", "Y")]
    assert tool.undo_decision(between, item("Y"))[0] == "conflict"
    assert tool.undo_decision(between, item("W"))[0] == "conflict"
    assert tool.undo_decision([put(None, "Y"), put("W", "Y")], item("Y"))[0] == "conflict"
    chained = [put("X", "Y"), put("Y", "Z")]
    assert tool.undo_decision(chained, item("Z")) == ("restore", "")
    assert tool.undo_decision(chained, item("Y")) == ("restore", "")   # run 2's batch never sent
    assert tool.undo_decision(chained, item("X")) == ("already", "")
    assert tool.undo_decision([put(None, "Y")], None) == ("already", "")
    assert tool.undo_decision([put(None, "Y")], item("Y")) == ("delete", "")


def test_a_delete_only_run_deletes_every_listed_image(ddblocal_table: TableHandle, tmp_path: Path) -> None:
    """Images to delete hold no item of the source: the run must not end (and close its pool)
    before their partition reads and deletes are done. Found by review: 20 listed images,
    0 deleted, exit 0."""
    import uuid

    from items import GOLDEN_EXPORT, GOLDEN_IDS, expected_for_clone, put_items

    clones = [str(uuid.uuid4()) for _ in range(20)]
    for new_id in clones:
        clone = expected_for_clone(GOLDEN_IDS[0], new_id)
        put_items(ddblocal_table.client, ddblocal_table.name, clone.values())
    ids = tmp_path / "gone.txt"
    ids.write_text("\n".join(clones) + "\n", encoding="utf-8")
    export = tmp_path / "export"
    export.mkdir()
    shutil.copy(GOLDEN_EXPORT / f"{GOLDEN_IDS[1]}.json", export)
    result = run_cli(["--no-dry-run", "--yes", "--table", ddblocal_table.name, "--endpoint-url",
                      ddblocal_table.url, "--region", "us-east-1", "--export-dir", str(export),
                      *BUCKET_FLAGS, "--no-progress", "--delete-missing", "--delete-image-ids", str(ids),
                      "--journal", str(tmp_path / "j.jsonl")], report=tmp_path / "r.json")
    assert result.returncode == 0, result.describe()
    assert result.report is not None
    assert result.report["images"]["deleted"] == 20 and result.report["images"]["interrupted"] == 0
    assert result.report["items"]["deleted"] == result.report["items"]["to_delete"] > 0
    left = {k[0] for k in table_items(ddblocal_table.client, ddblocal_table.name)}
    assert not left & {f"IMAGE#{i}" for i in clones}
