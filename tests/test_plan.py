"""Issue 10: a dry run with a table is the exact plan of the live run that follows.

Prod is prepared with a messy partial migration of an export the tool has not seen (golden
images cloned under new ids): images absent; an image whose IMAGE item and some other items
are missing; a complete image with a few items deleted; labels whose ``reasoning`` or
``validation_status`` prod changed; receipt words whose embedding moved to SUCCESS in prod
(with GSI1PK); plus an image without receipts and a bad image. Then a dry run and a live run
with the same flags, each checked against an oracle computed here from the prepared table,
and against each other: the reports agree, the dry run's ``--dump-items`` are exactly the
items the live run writes (its dump and the table's stream), the dry run left no stream
record, and prod's changed labels are still prod's.

Also issue 13.5: the confirmation prompt states what the run will do, as the dry run does.
"""

from __future__ import annotations

import json
import re
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cli import BUCKET_FLAGS, live_args, run_cli, run_on_pty
from conftest import TableHandle
from exports import clone_export, fake_uuid, write_export
from items import (
    IMG_LEGACY,
    IMG_META_AND_PLACE,
    IMG_PLACE_EMPTY_ID,
    IMG_ROUNDING,
    IMG_VERBATIM,
    Item,
    Key,
    canonical_item,
    expected_for_clone,
    item_key,
    put_items,
    read_jsonl,
    stream_records,
    table_values,
)
from servers import REGION

# image role -> the golden image it is cloned from
ABSENT_1, ABSENT_2, PARTIAL, DAMAGED, COMPLETE, EMPTY, BAD = (
    "absent-1", "absent-2", "partial", "damaged", "complete", "empty", "bad")
SOURCES = {ABSENT_1: IMG_ROUNDING, ABSENT_2: IMG_VERBATIM, PARTIAL: IMG_PLACE_EMPTY_ID,
           DAMAGED: IMG_META_AND_PLACE, COMPLETE: IMG_LEGACY, EMPTY: IMG_VERBATIM, BAD: IMG_LEGACY}
RECEIPT_LISTS = ("receipts", "receipt_lines", "receipt_words", "receipt_letters",
                 "receipt_word_labels", "receipt_places", "receipt_metadatas", "receipt_barcodes")


@dataclass
class Messy:
    """An export and the prod table prepared from it."""

    export_dir: Path
    ids: dict[str, str]                # role -> image id
    expected: dict[str, dict[Key, Item]]  # image id -> its items as a fresh copy writes them
    prod: dict[Key, Item]              # what the table holds before the runs
    changed_labels: set[Key]           # RECEIPT_WORD_LABEL items prod changed
    moved_words: set[Key]              # RECEIPT_WORD items prod moved to SUCCESS


def prepare_messy_prod(tmp_path: Path, table: TableHandle, salt: str) -> Messy:
    export_dir = tmp_path / "export"
    ids = {role: fake_uuid(n, salt) for n, role in enumerate(SOURCES)}
    expected: dict[str, dict[Key, Item]] = {}
    for role, golden in SOURCES.items():
        new_id = ids[role]
        data = clone_export(golden, new_id)
        if role == EMPTY:
            for name in RECEIPT_LISTS:
                if name in data:
                    data[name] = []
        if role == BAD:
            data["lines"][0]["line_id"] = "not a number"
        write_export(export_dir, data, f"{new_id}.json")
        if role not in (EMPTY, BAD):
            expected[new_id] = expected_for_clone(golden, new_id)

    prod: dict[Key, Item] = {}
    changed_labels: set[Key] = set()
    moved_words: set[Key] = set()
    for role in (PARTIAL, DAMAGED, COMPLETE):
        items = {k: json.loads(json.dumps(v)) for k, v in expected[ids[role]].items()}
        keys = sorted(items)
        if role == PARTIAL:  # an interrupted copy: no IMAGE item, and a few items never written
            for key in [k for k in keys if k[1] == "IMAGE"] + keys[5:60:7]:
                del items[key]
        if role == DAMAGED:  # complete, then a few items deleted by hand
            for key in [k for k in keys if k[1] != "IMAGE"][3:40:9]:
                del items[key]
        if role in (PARTIAL, DAMAGED):
            labels = [k for k in sorted(items) if items[k]["TYPE"]["S"] == "RECEIPT_WORD_LABEL"]
            items[labels[0]]["reasoning"] = {"S": "prod reviewer: " + "checked by hand " * 20}
            items[labels[1]]["validation_status"] = {"S": "INVALID"}
            changed_labels |= {labels[0], labels[1]}
            words = [k for k in sorted(items) if items[k]["TYPE"]["S"] == "RECEIPT_WORD"][:3]
            for key in words:
                items[key]["embedding_status"] = {"S": "SUCCESS"}
                items[key]["GSI1PK"] = {"S": "EMBEDDING_STATUS#SUCCESS"}
            moved_words |= set(words)
        prod.update(items)
    put_items(table.client, table.name, list(prod.values()))
    return Messy(export_dir, ids, expected, prod, changed_labels, moved_words)


def canonical(items: dict[Key, Item]) -> dict[Key, Item]:
    return {k: canonical_item(v) for k, v in items.items()}


def oracle(messy: Messy, flags: list[str]) -> dict[str, Any]:
    """What the run must decide, computed from the prepared table alone."""
    skip_existing = "--no-skip-existing" not in flags
    limit = int(flags[flags.index("--limit") + 1]) if "--limit" in flags else None
    shard = tuple(map(int, flags[flags.index("--shard") + 1].split("/"))) if "--shard" in flags else None
    in_prod = {i for i in messy.expected if (f"IMAGE#{i}", "IMAGE") in messy.prod}
    chosen: list[str] = []
    counts = {"copied": 0, "failed": 0, "skipped_empty": 0, "skipped_existing": 0, "not_reached_limit": 0}
    walked = [i for i in sorted(messy.ids.values())  # the tool walks the files in name order
              if not shard or zlib.crc32(i.lower().encode()) % shard[1] == shard[0]]
    copied = 0
    for n, image_id in enumerate(walked):
        if image_id in in_prod and skip_existing:
            counts["skipped_existing"] += 1
            continue
        if limit is not None and copied >= limit and image_id not in in_prod:
            counts["not_reached_limit"] = len(walked) - n
            break
        if image_id == messy.ids[BAD]:
            counts["failed"] += 1
            continue
        if image_id == messy.ids[EMPTY]:
            counts["skipped_empty"] += 1
            continue
        copied += image_id not in in_prod
        chosen.append(image_id)
    to_write = {k: v for i in chosen for k, v in messy.expected[i].items() if k not in messy.prod}
    conflicts = {k for i in chosen for k in messy.expected[i] if k in messy.changed_labels}
    kept = {k for i in chosen for k in messy.expected[i] if k in messy.moved_words}
    for image_id in chosen:  # an image in prod with nothing to write is skipped, not copied
        nothing = image_id in in_prod and not messy.expected[image_id].keys() & to_write.keys()
        counts["skipped_existing" if nothing else "copied"] += 1
    return {"chosen": chosen, "to_write": to_write, "conflicts": conflicts, "kept": kept,
            "counts": counts}


COMPARED_IMAGES = ("copied", "skipped_existing", "skipped_empty", "failed", "not_reached_limit",
                   "interrupted")
COMPARED_ITEMS = ("planned", "to_write", "unchanged", "prod_progress_kept", "conflicts")


def conflict_keys(report: dict[str, Any]) -> set[Key]:
    return {(c["PK"], c["SK"]) for c in report["conflicts"]}


def engine_table(request: pytest.FixtureRequest, engine: str) -> TableHandle:
    handle: TableHandle = request.getfixturevalue("ddblocal_table" if engine == "ddblocal" else "fresh_table")
    return handle


FLAG_SETS = {"default": [], "no-skip-existing": ["--no-skip-existing"], "limit": ["--limit", "1"],
             "shard-0": ["--shard", "0/2"], "shard-1": ["--shard", "1/2"]}


# Both engines for every kind of flag; the second shard on DynamoDB Local only (moto is slow).
CASES = [pytest.param(engine, flags, id=f"{engine}-{name}") for engine in ("ddblocal", "moto")
         for name, flags in FLAG_SETS.items() if not (engine == "moto" and name == "shard-1")]


@pytest.mark.parametrize("engine, flags", CASES)
def test_dry_run_with_a_table_is_the_exact_plan_of_the_live_run(
        request: pytest.FixtureRequest, tmp_path: Path, engine: str, flags: list[str]) -> None:
    table = engine_table(request, engine)
    messy = prepare_messy_prod(tmp_path, table, salt=f"{zlib.crc32(repr(flags).encode()) & 0xFFFF:04x}")
    want = oracle(messy, flags)
    assert want["chosen"] or flags[:1] == ["--shard"], "the case must copy something"
    args = live_args(table.name, table.url, messy.export_dir, *flags)
    dry_args = [a for a in args if a not in ("--no-dry-run", "--yes")]
    records_before = stream_records(table.url, table.client, table.name)

    dry = run_cli([*dry_args, "--dump-items", str(tmp_path / "dry.jsonl")], report=tmp_path / "dry.json")
    assert dry.report is not None, dry.describe()
    assert dry.returncode == (1 if want["counts"]["failed"] else 0), dry.describe()
    for key, n in want["counts"].items():
        assert dry.report["images"][key] == n, (key, dry.report["images"])
    assert stream_records(table.url, table.client, table.name) == records_before, \
        "the dry run wrote to the table"
    assert table_values(table.client, table.name) == canonical(messy.prod)
    planned = {item_key(i): i for i in read_jsonl(tmp_path / "dry.jsonl")}

    # the plan is the oracle's, item for item (the N text exactly as the tool sends it)
    assert sorted(planned) == sorted(want["to_write"])
    assert planned == want["to_write"]
    assert conflict_keys(dry.report) == want["conflicts"]
    assert dry.report["items"]["prod_progress_kept"] == len(want["kept"])
    assert dry.report["items"]["written"] == 0
    assert dry.report["prod_checked"] is True

    live = run_cli([*args, "--dump-items", str(tmp_path / "live.jsonl")], report=tmp_path / "live.json")
    assert live.report is not None, live.describe()
    assert live.returncode == dry.returncode, live.describe()
    written = {item_key(i): i for i in read_jsonl(tmp_path / "live.jsonl")}
    assert written == planned, "the live run wrote other items than the dry run planned"

    for key in COMPARED_IMAGES:
        assert dry.report["images"][key] == live.report["images"][key], (key, dry.report["images"],
                                                                          live.report["images"])
    for key in COMPARED_ITEMS:
        assert dry.report["items"][key] == live.report["items"][key], (key, dry.report["items"],
                                                                        live.report["items"])
    assert conflict_keys(live.report) == conflict_keys(dry.report)
    assert live.report["items"]["written"] == live.report["items"]["to_write"] == len(planned)

    # the table: prod as prepared plus exactly the planned items; prod's labels and progress kept
    after = table_values(table.client, table.name)
    assert after == canonical({**messy.prod, **planned})
    for key in messy.changed_labels | messy.moved_words:
        assert after[key] == canonical_item(messy.prod[key])
    new_records = stream_records(table.url, table.client, table.name)[len(records_before):]
    assert {tuple(r["dynamodb"]["Keys"][k]["S"] for k in ("PK", "SK")) for r in new_records} == set(planned)
    assert all(r["eventName"] == "INSERT" for r in new_records)
    assert {item_key(r["dynamodb"]["NewImage"]): canonical_item(r["dynamodb"]["NewImage"])
            for r in new_records} == {k: canonical_item(v) for k, v in planned.items()}


def test_conflicts_carry_both_values_cut_at_200_characters(ddblocal_table: TableHandle,
                                                           tmp_path: Path) -> None:
    messy = prepare_messy_prod(tmp_path, ddblocal_table, salt="c0f1")
    args = [a for a in live_args(ddblocal_table.name, ddblocal_table.url, messy.export_dir,
                                 "--no-skip-existing") if a not in ("--no-dry-run", "--yes")]
    dry = run_cli(args, report=tmp_path / "dry.json")
    assert dry.report is not None, dry.describe()
    by_key = {(c["PK"], c["SK"]): c for c in dry.report["conflicts"]}
    assert set(by_key) == messy.changed_labels
    for key, conflict in by_key.items():
        ours = messy.expected[key[0][len("IMAGE#"):]][key]
        theirs = messy.prod[key]
        assert conflict["attributes"] in (["reasoning"], ["validation_status"])
        name = conflict["attributes"][0]
        shown = conflict["values"][name]
        for side, item in (("prod", theirs), ("export", ours)):
            text = json.dumps(item[name], sort_keys=True, ensure_ascii=False)
            if len(text) <= 200:
                assert shown[side] == text
            else:
                assert shown[side].startswith(text[:200]) and len(shown[side]) < len(text)
                assert "cut" in shown[side][200:]
    # the summary: one line per conflict (key and attribute) and where the values are
    for (pk, sk), conflict in by_key.items():
        assert f"{pk} {sk}: {conflict['attributes'][0]}" in dry.stdout
    assert f"--report {tmp_path / 'dry.json'}" in dry.stdout
    assert "kept unless --overwrite-changed" in dry.stdout


# --------------------------------------------------------------------------- the prompt (13.5)


def prompt_line(before: str) -> str:
    lines = [line.strip() for line in before.splitlines() if re.search(r"\bimages? to copy\b", line)]
    assert len(lines) == 1, before
    return lines[0]


def test_prompt_states_what_the_run_will_do(ddblocal_table: TableHandle,
                                                         tmp_path: Path) -> None:
    """An image without receipts and an image already in prod are not counted as copies; the
    prompt's numbers are the dry run's."""
    export_dir = tmp_path / "export"
    ids = {role: fake_uuid(n, "9e0f") for n, role in enumerate((ABSENT_1, ABSENT_2, COMPLETE, EMPTY))}
    expected: dict[Key, Item] = {}
    for role, new_id in ids.items():
        data = clone_export(SOURCES[role], new_id)
        if role == EMPTY:
            for name in RECEIPT_LISTS:
                data[name] = []
        write_export(export_dir, data, f"{new_id}.json")
        if role != EMPTY:
            expected.update(expected_for_clone(SOURCES[role], new_id))
    in_prod = [v for k, v in expected.items() if k[0] == f"IMAGE#{ids[COMPLETE]}"]
    put_items(ddblocal_table.client, ddblocal_table.name, in_prod)

    args = ["--table", ddblocal_table.name, "--endpoint-url", ddblocal_table.url, "--region", REGION,
            "--export-dir", str(export_dir), *BUCKET_FLAGS, "--no-progress"]
    dry = run_cli(args, report=tmp_path / "dry.json")
    assert dry.returncode == 0 and dry.report is not None, dry.describe()
    code, before, whole = run_on_pty([*args, "--no-dry-run"], "no")
    assert code != 0, whole
    line = prompt_line(before)
    copies = dry.report["images"]["copied"]
    assert copies == 2
    items = dry.report["items"]["planned"]
    assert items == sum(1 for k in expected if k[0] != f"IMAGE#{ids[COMPLETE]}")
    assert line.startswith(f"{copies:,} images to copy"), line
    assert f"up to {items:,} items" in line, line
    assert "1 already in prod, skipped" in line and "1 without receipts, skipped" in line, line
    assert table_values(ddblocal_table.client, ddblocal_table.name) == \
        {item_key(i): canonical_item(i) for i in in_prod}


def test_prompt_counts_no_images_beyond_the_limit(ddblocal_table: TableHandle, tmp_path: Path) -> None:
    export_dir = tmp_path / "export"
    for n, golden in enumerate((IMG_ROUNDING, IMG_VERBATIM, IMG_LEGACY)):
        new_id = fake_uuid(n, "1f0a")
        write_export(export_dir, clone_export(golden, new_id), f"{new_id}.json")
    args = ["--table", ddblocal_table.name, "--endpoint-url", ddblocal_table.url, "--region", REGION,
            "--export-dir", str(export_dir), *BUCKET_FLAGS, "--no-progress", "--limit", "2"]
    dry = run_cli(args, report=tmp_path / "dry.json")
    assert dry.report is not None, dry.describe()
    _, before, _ = run_on_pty([*args, "--no-dry-run"], "no")
    line = prompt_line(before)
    assert line.startswith("2 images to copy"), line
    assert f"up to {dry.report['items']['planned']:,} items" in line, line
    assert "1 left for a later run (--limit)" in line, line

