"""A catalogue of bad export files, each run LIVE against DynamoDB Local.

Every case writes an export dir with two good golden images plus one bad file and runs
``--no-dry-run --yes`` into a fresh table. The bad file must fail alone, with exactly one
error naming the file, the entity kind and index, and the field (where one applies); none of
its items may reach the table; the good images must be in the table exactly as the golden
vectors say. Never-copy kinds are not errors: they are skipped, counted, and the run exits 0.

The limits the tool checks up front (empty key strings, item size) are also probed directly
on DynamoDB Local (AWS's validation) and moto: the tool must never be looser than the engine.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError
from cli import CliResult, live_args, run_cli, summary_errors
from conftest import TableHandle
from exports import copy_golden, fake_uuid, golden_export_path, load_export
from items import (
    IMG_LEGACY,
    IMG_META_AND_PLACE,
    IMG_PLACE_EMPTY_ID,
    IMG_VERBATIM,
    assert_table_equals,
    load_expected,
    table_items,
)

import copy_dynamodb_dev_to_prod as tool

GOOD_IDS = (IMG_VERBATIM, IMG_META_AND_PLACE)
ANY: Any = object()  # "not checked" (the tool may or may not name it)
OTHER_IMAGE = IMG_VERBATIM  # a good image of the same export dir


@dataclass
class Bad:
    """One bad export file: how to build it and what the error must say."""

    id: str
    build: Callable[[], tuple[str, bytes]]  # -> (file name, file bytes)
    entity: Any = None
    index: Any = None
    field: Any = None
    message: str = ""  # substring of the error message (case-insensitive)
    exit_code: int = 1
    bad_ids: tuple[str, ...] = ()  # PKs that must not be in the table
    excluded: int = 0  # never-copy entries expected to be counted


# --------------------------------------------------------------------------- builders


def dumped(data: Any, name: str | None = None) -> tuple[str, bytes]:
    if name is None:
        name = f"{data['images'][0]['image_id']}.json"
    return name, json.dumps(data, indent=4).encode("utf-8")


def edit(fn: Callable[[dict[str, Any]], Any], base: str = IMG_PLACE_EMPTY_ID,
         name: str | None = None) -> Callable[[], tuple[str, bytes]]:
    """A golden image with ``fn`` applied to its parsed object."""
    def build() -> tuple[str, bytes]:
        data = load_export(base)
        result = fn(data)
        return dumped(data if result is None else result, name)
    return build


def raw(fn: Callable[[bytes], bytes], base: str = IMG_PLACE_EMPTY_ID) -> Callable[[], tuple[str, bytes]]:
    """A golden image file with ``fn`` applied to its bytes."""
    def build() -> tuple[str, bytes]:
        return f"{base}.json", fn(golden_export_path(base).read_bytes())
    return build


def setf(kind: str, index: int, **values: Any) -> Callable[[dict[str, Any]], None]:
    def fn(d: dict[str, Any]) -> None:
        d[kind][index].update(values)
    return fn


def delf(kind: str, index: int, name: str) -> Callable[[dict[str, Any]], None]:
    def fn(d: dict[str, Any]) -> None:
        del d[kind][index][name]
    return fn


def sub_once(pattern: bytes, new: bytes) -> Callable[[bytes], bytes]:
    def fn(b: bytes) -> bytes:
        out, n = re.subn(pattern, new, b, count=1)
        assert n == 1, pattern
        return out
    return fn


def replace_once(old: bytes, new: bytes) -> Callable[[bytes], bytes]:
    def fn(b: bytes) -> bytes:
        assert old in b, old
        return b.replace(old, new, 1)
    return fn


def append_copy(kind: str, index: int, **changes: Any) -> Callable[[dict[str, Any]], None]:
    def fn(d: dict[str, Any]) -> None:
        d[kind].append(dict(copy.deepcopy(d[kind][index]), **changes))
    return fn


def label_collision(d: dict[str, Any]) -> None:
    """`TOTAL` and `total` on the same word: the same SK after upper()."""
    word = d["receipt_word_labels"][0]
    d["receipt_word_labels"].append(dict(copy.deepcopy(word), label="TOTAL"))
    d["receipt_word_labels"].append(dict(copy.deepcopy(word), label="total"))


def non_uuid_image(new_id: str) -> Callable[[], tuple[str, bytes]]:
    def build() -> tuple[str, bytes]:
        text = golden_export_path(IMG_PLACE_EMPTY_ID).read_text(encoding="utf-8")
        return f"{new_id}.json", text.replace(IMG_PLACE_EMPTY_ID, new_id).encode("utf-8")
    return build


def two_images(d: dict[str, Any]) -> None:
    d["images"].append(copy.deepcopy(d["images"][0]))


def never_copy(d: dict[str, Any]) -> None:
    """Every never-copy kind of ITEMS.md §7, as lists and as entries of known lists."""
    img = IMG_PLACE_EMPTY_ID
    run = {"PK": f"IMAGE#{img}", "SK": "RECEIPT#00001#COMPACTION_RUN#run-1", "TYPE": "COMPACTION_RUN",
           "GSI1PK": "RUNS", "GSI1SK": "CREATED_AT#2025-08-01T00:00:00"}
    lock = {"PK": "LOCK#lines#lock-1", "SK": "LOCK", "TYPE": "COMPACTION_LOCK",
            "GSI1PK": "LOCK#lines", "GSI1SK": "EXPIRES#2025-08-01T00:00:00"}
    batch = {"PK": "BATCH#b-1", "SK": f"RESULT#IMAGE#{img}#RECEIPT#00001#LINE#001#WORD#001",
             "TYPE": "EMBEDDING_BATCH_RESULT", "GSI2PK": "BATCH#b-1", "GSI2SK": "STATUS#SUCCESS"}
    job = {"PK": "JOB#j-1", "SK": "JOB", "TYPE": "JOB", "GSI1PK": "STATUS#done",
           "GSI1SK": "CREATED#2025-08-01"}
    metric = {"PK": "JOB#j-1", "SK": "METRIC#loss#2025-08-01T00:00:00", "TYPE": "JOB_METRIC",
              "GSI1PK": "METRIC#loss", "GSI1SK": "2025-08-01T00:00:00"}
    d["compaction_runs"] = [run]
    d["compaction_locks"] = [lock]
    d["embedding_batch_results"] = [batch]
    d["jobs"] = [job]
    d["job_metrics"] = [metric, dict(metric, SK="METRIC#loss#2025-08-02T00:00:00")]
    # entries hidden in known lists: by TYPE, and by key shape alone (no TYPE)
    d["receipt_lines"].append(dict(run))
    d["receipt_words"].append({k: v for k, v in run.items() if k != "TYPE"})
    d["receipt_words"].append({k: v for k, v in lock.items() if k != "TYPE"})
    d["receipt_letters"].append({k: v for k, v in batch.items() if k != "TYPE"})
    d["ocr_jobs"].append({k: v for k, v in metric.items() if k != "TYPE"})
    d["ocr_jobs"].append({k: v for k, v in job.items() if k != "TYPE"})


# --------------------------------------------------------------------------- the catalogue

P = IMG_PLACE_EMPTY_ID
CASES: list[Bad] = [
    # -- the file as a whole
    Bad("invalid_json", raw(replace_once(b'"lines": [', b'"lines": [,')), message="JSON"),
    Bad("truncated_file", raw(lambda b: b[: len(b) // 2]), message="JSON"),
    Bad("empty_file", raw(lambda b: b""), message="empty"),
    Bad("whitespace_only_file", raw(lambda b: b"  \n\n"), message="empty"),
    Bad("top_level_array", edit(lambda d: [d], name=f"{P}.json"), message="object"),
    Bad("top_level_string", edit(lambda d: "images", name=f"{P}.json"), message="object"),
    Bad("not_utf8", raw(replace_once(b'"text": "', b'"text": "\xff\xfe')), message="UTF-8"),
    Bad("latin1_encoded_text", raw(replace_once(b'"text": "', b'"text": "Caf\xe9 ')), message="UTF-8"),
    Bad("nan_number", raw(sub_once(rb'"confidence": [0-9.]+', b'"confidence": NaN')),
        entity=ANY, index=ANY, field=ANY, message="NaN"),
    Bad("infinity_number", raw(sub_once(rb'"angle_degrees": [-0-9.e]+', b'"angle_degrees": Infinity')),
        entity=ANY, index=ANY, field=ANY, message="Infinity"),
    Bad("negative_infinity_number", raw(sub_once(rb'"x": [0-9.e-]+', b'"x": -Infinity')),
        entity=ANY, index=ANY, field=ANY, message="Infinity"),
    # -- structure
    Bad("list_is_not_a_list", edit(lambda d: d.update(lines={})), entity="lines"),
    Bad("entry_not_an_object", edit(lambda d: d["receipt_words"].__setitem__(3, "oops")),
        entity="receipt_words", index=3),
    Bad("entry_is_null", edit(lambda d: d["receipts"].__setitem__(1, None)), entity="receipts", index=1),
    Bad("two_images_in_one_file", edit(two_images), entity="images",
        index=ANY, field=ANY),
    Bad("no_image_in_file", edit(lambda d: d.update(images=[]), name=f"{P}.json"), entity="images",
        index=ANY, field=ANY),
    # -- wrong JSON types
    Bad("width_is_a_string", edit(setf("images", 0, width="1170")), entity="images", index=0, field="width"),
    Bad("id_is_a_float", edit(setf("receipt_words", 5, word_id=1.0)),
        entity="receipt_words", index=5, field="word_id"),
    Bad("id_is_a_bool", edit(setf("letters", 2, letter_id=True)),
        entity="letters", index=2, field="letter_id"),
    Bad("width_is_a_bool", edit(setf("receipts", 0, width=True)), entity="receipts", index=0, field="width"),
    Bad("text_is_a_number", edit(setf("lines", 4, text=42)), entity="lines", index=4, field="text"),
    Bad("corners_not_an_object", edit(setf("receipts", 1, top_left=[0.1, 0.2])),
        entity="receipts", index=1, field="top_left"),
    # -- missing / extra / null fields
    Bad("missing_required_field", edit(delf("receipts", 1, "raw_s3_key")),
        entity="receipts", index=1, field="raw_s3_key"),
    Bad("missing_image_width", edit(delf("images", 0, "width")), entity="images", index=0, field="width"),
    Bad("missing_routing_updated_at", edit(delf("ocr_routing_decisions", 0, "updated_at")),
        entity="ocr_routing_decisions", index=0, field="updated_at"),
    Bad("null_text", edit(setf("lines", 2, text=None)), entity="lines", index=2, field="text"),
    Bad("unknown_field", edit(setf("receipt_lines", 0, colour="red")),
        entity="receipt_lines", index=0, field="colour"),
    # -- invalid values
    Bad("invalid_embedding_status", edit(setf("receipt_lines", 4, embedding_status="DONE")),
        entity="receipt_lines", index=4, field="embedding_status"),
    Bad("enum_is_case_sensitive", edit(setf("images", 0, image_type="scan")),
        entity="images", index=0, field="image_type"),
    Bad("invalid_validation_status", edit(setf("receipt_word_labels", 6, validation_status="APPROVED")),
        entity="receipt_word_labels", index=6, field="validation_status"),
    Bad("invalid_ocr_status", edit(setf("ocr_jobs", 0, status="RUNNING")),
        entity="ocr_jobs", index=0, field="status"),
    Bad("invalid_metadata_validated_by", edit(setf("receipt_metadatas", 0, validated_by=""), IMG_LEGACY),
        entity="receipt_metadatas", index=0, field="validated_by", bad_ids=(IMG_LEGACY,)),
    Bad("confidence_zero", edit(setf("words", 3, confidence=0)), entity="words", index=3, field="confidence"),
    Bad("confidence_above_one", edit(setf("receipt_letters", 1, confidence=1.5)),
        entity="receipt_letters", index=1, field="confidence"),
    Bad("bounding_box_wrong_keys", edit(setf("lines", 1, bounding_box={"x": 0, "y": 0, "w": 1, "h": 1})),
        entity="lines", index=1, field="bounding_box"),
    Bad("number_too_large_for_f18", edit(setf("lines", 0, angle_degrees=1e10)),
        entity="lines", index=0, field="angle_degrees"),
    Bad("bad_timestamp", edit(setf("receipts", 0, timestamp_added="yesterday")),
        entity="receipts", index=0, field="timestamp_added"),
    Bad("letter_text_two_chars", edit(setf("letters", 0, text="ab")),
        entity="letters", index=0, field="text"),
    Bad("latitude_out_of_range", edit(setf("receipt_places", 1, latitude=91.0)),
        entity="receipt_places", index=1, field="latitude"),
    Bad("label_reasoning_empty", edit(setf("receipt_word_labels", 2, reasoning="")),
        entity="receipt_word_labels", index=2, field="reasoning"),
    # -- ids
    Bad("image_id_not_uuid", non_uuid_image("not-a-uuid"), entity="images", index=0, field="image_id",
        bad_ids=("not-a-uuid",)),
    Bad("image_id_uuid_v1", non_uuid_image("6e9d7077-dca1-11ef-91b7-584a2265b1f5"),
        entity="images", index=0, field="image_id", bad_ids=("6e9d7077-dca1-11ef-91b7-584a2265b1f5",)),
    Bad("file_name_disagrees_with_image_id", edit(lambda d: None, name=f"{fake_uuid(1, 'bad0')}.json"),
        entity="images", index=0, field="image_id", bad_ids=(fake_uuid(1, "bad0"),)),
    Bad("job_id_not_uuid", edit(setf("ocr_jobs", 0, job_id="job-1")), entity="ocr_jobs", index=0,
        field="job_id"),
    Bad("child_of_another_image", edit(setf("receipt_words", 2, image_id=OTHER_IMAGE)),
        entity="receipt_words", index=2, field="image_id"),
    Bad("zero_line_id", edit(setf("lines", 0, line_id=0)), entity="lines", index=0, field="line_id"),
    Bad("negative_word_id", edit(setf("words", 1, word_id=-1)), entity="words", index=1, field="word_id"),
    Bad("zero_receipt_id", edit(setf("receipt_barcodes", 0, receipt_id=0)),
        entity="receipt_barcodes", index=0, field="receipt_id"),
    Bad("label_word_id_zero", edit(setf("receipt_word_labels", 5, word_id=0)),
        entity="receipt_word_labels", index=5, field="word_id"),
    Bad("zero_width", edit(setf("images", 0, width=0)), entity="images", index=0, field="width"),
    # -- keys
    Bad("duplicate_entity", edit(append_copy("receipt_words", 0)),
        entity="receipt_words", index=51, field=ANY, message="duplicate"),
    Bad("label_case_collision", edit(label_collision), entity="receipt_word_labels", index=35, field=ANY,
        message="duplicate"),
    Bad("label_contains_hash", edit(setf("receipt_word_labels", 3, label="TOTAL#1")),
        entity="receipt_word_labels", index=3, field="label"),
    Bad("empty_label", edit(setf("receipt_word_labels", 4, label="")),
        entity="receipt_word_labels", index=4, field="label"),
    Bad("merchant_without_ascii_alnum", edit(setf("receipt_places", 0, merchant_name="すき家")),
        entity="receipt_places", index=0, field="merchant_name"),
    Bad("merchant_name_empty", edit(setf("receipt_places", 1, merchant_name="")),
        entity="receipt_places", index=1, field="merchant_name"),
    Bad("item_over_400kb", edit(setf("words", 1, text="x" * 410_000)), entity="words", index=1, field=ANY,
        message="400"),
    Bad("sort_key_over_1024_bytes", edit(setf("receipt_word_labels", 7, label="L" * 1100)),
        entity="receipt_word_labels", index=7, field=ANY),
    # -- numbers DynamoDB cannot store (magnitude 1E-130 .. 9.99E+125, at most 38 significant digits)
    Bad("number_overflow", edit(setf("ocr_jobs", 0, reocr_delta_before=1e300)),
        entity="ocr_jobs", index=0, field="reocr_delta_before"),
    Bad("number_underflow", edit(setf("ocr_jobs", 0, reocr_delta_after=1e-200)),
        entity="ocr_jobs", index=0, field="reocr_delta_after"),
    Bad("map_number_overflow", edit(setf("receipt_places", 0, hours_data={"rating": 1e200})),
        entity="receipt_places", index=0, field="hours_data"),
    Bad("integer_over_38_digits", edit(setf("images", 0, width=2**140)),
        entity="images", index=0, field="width"),
    # -- text and nesting Python can parse but not send
    Bad("lone_surrogate_escape", raw(replace_once(b'"text": "', b'"text": "\\ud800')),
        entity=ANY, index=ANY, field=ANY),
    Bad("deeply_nested_json", raw(replace_once(b'"hours_data": {',
                                               b'"hours_data": {"deep": ' + b"[" * 100_000 + b"]" * 100_000
                                               + b", ")), entity=ANY, index=ANY, field=ANY),
    # -- lists
    Bad("unknown_entity_list", edit(lambda d: d.update(receipt_summaries=[{"receipt_id": 1}])),
        entity="receipt_summaries", field=ANY, message="would be silently lost in prod"),
    Bad("never_copy_kinds", edit(never_copy), exit_code=0, excluded=12),
]


# --------------------------------------------------------------------------- running a case


@dataclass
class Outcome:
    """What one live run left behind."""

    name: str  # the bad file's name
    result: CliResult
    report: dict[str, Any]
    table: TableHandle


def run_case(case: Bad, table: TableHandle, workdir: Path) -> Outcome:
    """Export dir (two good golden images + the bad file), then a live run into ``table``."""
    export_dir = workdir / "export"
    copy_golden(export_dir, GOOD_IDS)
    name, content = case.build()
    (export_dir / name).write_bytes(content)
    result = run_cli(live_args(table.name, table.url, export_dir), report=workdir / "report.json")
    return Outcome(name, result, result.report or {}, table)


def check_error(case: Bad, name: str, error: dict[str, Any]) -> None:
    assert error["file"] == name
    for attr in ("entity", "index", "field"):
        want = getattr(case, attr)
        if want is not ANY:
            assert error[attr] == want, (attr, error)
    if case.message:
        assert case.message.lower() in error["message"].lower(), error


def check_outcome(case: Bad, run: Outcome) -> None:
    name, result, report = run.name, run.result, run.report
    assert result.returncode == case.exit_code, result.describe()
    assert "Traceback" not in result.stderr, result.stderr
    assert report, result.output
    stderr_errors = [line for line in result.stderr.splitlines() if line.startswith("ERROR")]
    if case.exit_code == 0:
        assert report["errors"] == [] and stderr_errors == [], result.output
        assert report["images"]["copied"] == 3 and report["images"]["failed"] == 0
        assert sum(report["excluded"].values()) == case.excluded, report["excluded"]
        good: tuple[str, ...] = (*GOOD_IDS, IMG_PLACE_EMPTY_ID)
    else:
        # exactly one error, in the log, in the summary and in the report, naming the file
        assert len(stderr_errors) == 1, result.stderr
        assert name in stderr_errors[0]
        assert [line for line in result.stderr.splitlines() if name in line] == stderr_errors
        assert len(summary_errors(result.stdout)) == 1, result.stdout
        assert summary_errors(result.stdout)[0].startswith(name)
        assert len(report["errors"]) == 1, report["errors"]
        error = report["errors"][0]
        check_error(case, name, error)
        where = []
        if error["entity"] is not None:
            index = error["index"]
            where.append(error["entity"] if index is None else f"{error['entity']}[{index}]")
        if error["field"] is not None:
            where.append(f"'{error['field']}'")
        for part in where:  # the printed line names what the report names
            assert part in stderr_errors[0], (part, stderr_errors[0])
        assert report["images"] == dict(report["images"], total=3, copied=2, failed=1)
        good = GOOD_IDS

    stem = name[: -len(".json")] if name.endswith(".json") else name
    forbidden = {f"IMAGE#{i}" for i in (*case.bad_ids, stem) if i not in good}
    if case.exit_code != 0:
        forbidden.add(f"IMAGE#{IMG_PLACE_EMPTY_ID}")
    keys = table_items(run.table.client, run.table.name)
    leaked = sorted({pk for pk, _ in keys} & forbidden)
    assert not leaked, f"items of the bad image reached the table: {leaked}"
    assert_table_equals(run.table.client, run.table.name, load_expected(good))


def test_catalogue_is_large_enough() -> None:
    assert len({c.id for c in CASES}) == len(CASES)
    assert len(CASES) >= 20


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_live(case: Bad, ddblocal_table: TableHandle, tmp_path: Path) -> None:
    check_outcome(case, run_case(case, ddblocal_table, tmp_path))


# --------------------------------------------------------------------------- the engines agree


def golden_item(item_type: str, image_id: str = IMG_PLACE_EMPTY_ID) -> dict[str, Any]:
    """A golden expected item of this TYPE (what the tool writes), to probe the servers with."""
    expected = load_expected([image_id])
    for key in sorted(expected):
        if expected[key]["TYPE"]["S"] == item_type:
            return copy.deepcopy(expected[key])
    raise AssertionError(item_type)


def engine_rejects(table: TableHandle, item: dict[str, Any]) -> str | None:
    """The error code if the engine rejects PutItem of ``item``, else None."""
    try:
        table.client.put_item(TableName=table.name, Item=item)
    except ClientError as exc:
        return str(exc.response["Error"]["Code"])
    return None


@pytest.mark.parametrize("key", ["PK", "SK", "GSI1PK", "GSI2SK"])
def test_engines_reject_empty_key_strings(ddb_table: TableHandle, key: str) -> None:
    """The tool refuses an item with an empty key string before writing, and so do the
    engines (DynamoDB Local and moto check index keys too)."""
    item = dict(golden_item("RECEIPT_PLACE"), **{key: {"S": ""}})
    with pytest.raises(tool.InputError):
        tool.check_item_limits(item)
    assert engine_rejects(ddb_table, item) == "ValidationException"
    assert table_items(ddb_table.client, ddb_table.name) == {}


def test_engines_reject_items_over_400kb(ddb_table: TableHandle) -> None:
    big = dict(golden_item("WORD"), text={"S": "x" * 410_000})
    with pytest.raises(tool.InputError):
        tool.check_item_limits(big)
    assert engine_rejects(ddb_table, big) == "ValidationException"
    assert table_items(ddb_table.client, ddb_table.name) == {}


@pytest.mark.parametrize("item_type,attribute", [
    ("WORD", "text"), ("RECEIPT_WORD", "text"), ("RECEIPT_PLACE", "reasoning"),
    ("IMAGE", "sha256"), ("OCR_JOB", "s3_key"),
])
def test_item_size_check_is_never_looser_than_the_engine(ddblocal_table: TableHandle, item_type: str,
                                                         attribute: str) -> None:
    """At the 400 KB limit: the largest item the tool accepts is accepted by DynamoDB Local (a
    looser check would let a batch fail mid-image); the tool is at most a little stricter."""
    item = golden_item(item_type)
    base = tool.item_size(dict(item, **{attribute: {"S": ""}}))
    largest = 400 * 1024 - base
    fits = dict(item, **{attribute: {"S": "x" * largest}})
    tool.check_item_limits(fits)
    with pytest.raises(tool.InputError):
        tool.check_item_limits(dict(item, **{attribute: {"S": "x" * (largest + 1)}}))
    assert engine_rejects(ddblocal_table, fits) is None
    assert engine_rejects(ddblocal_table, dict(item, **{attribute: {"S": "x" * (largest + 64)}})) \
        == "ValidationException"
