"""Other sources than export files (issue 12): the dev table (--source-table) and DynamoDB
JSON items (--source-items: .jsonl/.jsonl.gz, or a downloaded export-to-S3 folder).

The dev items are the golden prod items with the two migration rules undone (dev bucket
names where the export has them; each receipt line's and word's own embedding_status and
its GSI1PK), taken from the golden files, not from the tool. Some partitions also hold
never-copy items and items of types no export holds. Live runs talk to DynamoDB Local (the
reference engine, which trims numbers and validates strictly) and to a moto server.
"""

from __future__ import annotations

import gzip
import json
import random
import subprocess
import sys
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pytest
from cli import BUCKET_FLAGS, TOOL, run_cli
from exports import load_export
from fault_proxy import FaultProxy
from items import (
    GOLDEN_EXPORT,
    GOLDEN_IDS,
    IMG_LEGACY,
    IMG_META_AND_PLACE,
    IMG_PLACE_EMPTY_ID,
    IMG_ROUNDING,
    IMG_VERBATIM,
    Item,
    Key,
    by_key,
    canonical_item,
    load_expected,
    scan_all,
)
from servers import REGION, env_for_subprocess

# --------------------------------------------------------------------------- dev items


def export_entity_key(list_name: str, e: dict[str, Any]) -> str | None:
    """The SK of an export entity whose item a migration rule changes."""
    if list_name == "images":
        return "IMAGE"
    if list_name == "receipts":
        return f"RECEIPT#{e['receipt_id']:05d}"
    if list_name == "receipt_lines":
        return f"RECEIPT#{e['receipt_id']:05d}#LINE#{e['line_id']:05d}"
    if list_name == "receipt_words":
        return f"RECEIPT#{e['receipt_id']:05d}#LINE#{e['line_id']:05d}#WORD#{e['word_id']:05d}"
    return None


def dev_items(image_id: str, new_id: str | None = None) -> list[Item]:
    """What the dev table holds for a golden image: its prod items with the rules undone.
    ``new_id`` clones the image under another id."""
    export = load_export(image_id)
    dev_values: dict[str, dict[str, Any]] = {}
    for list_name, entries in export.items():
        for e in entries:
            sk = export_entity_key(list_name, e)
            if sk is not None:
                dev_values[sk] = e
    items = []
    for item in load_expected([image_id]).values():
        item = json.loads(json.dumps(item))
        e = dev_values.get(item["SK"]["S"], {})
        if item["TYPE"]["S"] in ("IMAGE", "RECEIPT"):
            item["raw_s3_bucket"] = {"S": e["raw_s3_bucket"]}
            item["cdn_s3_bucket"] = {"S": e["cdn_s3_bucket"]} if e.get("cdn_s3_bucket") else {"NULL": True}
        elif item["TYPE"]["S"] in ("RECEIPT_LINE", "RECEIPT_WORD"):
            status = e.get("embedding_status", "NONE")
            item["embedding_status"] = {"S": status}
            item["GSI1PK"] = {"S": f"EMBEDDING_STATUS#{status}"}
        items.append(item)
    if new_id:
        items = json.loads(json.dumps(items).replace(image_id, new_id))
    return items


def expected_prod(image_id: str, new_id: str | None = None) -> list[Item]:
    items = list(load_expected([image_id]).values())
    return json.loads(json.dumps(items).replace(image_id, new_id)) if new_id else items


def never_copy_items(image_id: str) -> list[Item]:
    """Never-copy items inside an image partition (by TYPE and key shape)."""
    pk = {"S": f"IMAGE#{image_id}"}
    return [
        {"PK": pk, "SK": {"S": f"RECEIPT#00001#COMPACTION_RUN#{uuid.uuid4()}"},
         "TYPE": {"S": "COMPACTION_RUN"}, "GSI1PK": {"S": "RUNS"},
         "GSI1SK": {"S": "CREATED_AT#2026-01-01T00:00:00"}},
        {"PK": pk, "SK": {"S": f"RECEIPT#00002#COMPACTION_RUN#{uuid.uuid4()}"},
         "TYPE": {"S": "COMPACTION_RUN"}, "lines_state": {"S": "COMPLETED"}},
        {"PK": pk, "SK": {"S": "JOB"}, "TYPE": {"S": "JOB"}, "name": {"S": "stray job"}},
    ]


def other_type_items(image_id: str) -> list[Item]:
    """Items of types that live in image partitions but are not exported."""
    pk = {"S": f"IMAGE#{image_id}"}
    return [
        {"PK": pk, "SK": {"S": "RECEIPT#00001#SUMMARY"}, "TYPE": {"S": "RECEIPT_SUMMARY"},
         "total": {"N": "12.5"}},
        {"PK": pk, "SK": {"S": "RECEIPT#00001#SECTION#HEADER"}, "TYPE": {"S": "RECEIPT_SECTION"}},
        {"PK": pk, "SK": {"S": "RECEIPT#00001#SECTION#FOOTER"}, "TYPE": {"S": "RECEIPT_SECTION"}},
        {"PK": pk, "SK": {"S": "RECEIPT#00001#LINE_ITEM#00001"}, "TYPE": {"S": "RECEIPT_LINE_ITEM"},
         "quantity": {"N": "2"}},
    ]


def outside_items() -> list[Item]:
    """Items outside image partitions (a whole-table export holds them too)."""
    return [
        {"PK": {"S": "LOCK#lines#1"}, "SK": {"S": "LOCK"}, "TYPE": {"S": "COMPACTION_LOCK"}},
        {"PK": {"S": f"JOB#{uuid.uuid4()}"}, "SK": {"S": "JOB"}, "TYPE": {"S": "JOB"}},
        {"PK": {"S": "MERCHANT#X"}, "SK": {"S": "PROFILE"}, "TYPE": {"S": "MERCHANT_PROFILE"}},
    ]


# Extras per image: which partitions get never-copy and other-type items.
EXTRA_NEVER = (IMG_ROUNDING, IMG_LEGACY)
EXTRA_OTHER = (IMG_ROUNDING, IMG_VERBATIM)


def golden_dev_table_items() -> list[Item]:
    items = [i for image_id in GOLDEN_IDS for i in dev_items(image_id)]
    for image_id in EXTRA_NEVER:
        items += never_copy_items(image_id)
    for image_id in EXTRA_OTHER:
        items += other_type_items(image_id)
    return items + outside_items()


def extras_counts(never: Iterable[str], other: Iterable[str]) -> tuple[dict[str, int], dict[str, int]]:
    """(excluded, other_types) as the report counts them for these partitions."""
    never, other = list(never), list(other)
    excluded = {"compaction_runs": 2 * len(never), "jobs": len(never)}
    other_types = {"RECEIPT_SUMMARY": len(other), "RECEIPT_SECTION": 2 * len(other),
                   "RECEIPT_LINE_ITEM": len(other)}
    return excluded, other_types


# --------------------------------------------------------------------------- writing sources


def put_items(client: Any, table: str, items: Sequence[Item]) -> None:
    for start in range(0, len(items), 25):
        request = {table: [{"PutRequest": {"Item": i}} for i in items[start:start + 25]]}
        while request:
            request = client.batch_write_item(RequestItems=request).get("UnprocessedItems") or {}


def write_jsonl_gz(path: Path, items: Iterable[Item]) -> Path:
    with gzip.open(path, "wt", encoding="utf-8") as f:
        for item in items:
            f.write(json.dumps(item) + "\n")
    return path


def write_s3_export(folder: Path, items: Sequence[Item], files: int = 4, seed: int = 0,
                    **summary: Any) -> Path:
    """A downloaded export-to-S3 folder: items shuffled over ``files`` data/*.json.gz files,
    one {"Item": ...} a line, with manifest-summary.json and manifest-files.json."""
    export_id = "01700000000000-abcdef12"
    root = folder / "AWSDynamoDB" / export_id
    (root / "data").mkdir(parents=True)
    shuffled = list(items)
    random.Random(seed).shuffle(shuffled)
    manifest_lines = []
    for n in range(files):
        part = shuffled[n::files]
        name = f"{uuid.uuid5(uuid.NAMESPACE_URL, str(n)).hex[:26]}.json.gz"
        with gzip.open(root / "data" / name, "wt", encoding="utf-8") as f:
            for item in part:
                f.write(json.dumps({"Item": item}) + "\n")
        manifest_lines.append(json.dumps({"itemCount": len(part), "md5Checksum": "x", "etag": "y",
                                          "dataFileS3Key": f"AWSDynamoDB/{export_id}/data/{name}"}))
    (root / "manifest-files.json").write_text("\n".join(manifest_lines) + "\n", encoding="utf-8")
    (root / "manifest-summary.json").write_text(json.dumps({
        "version": "2020-06-30", "exportType": "FULL_EXPORT", "outputFormat": "DYNAMODB_JSON",
        "itemCount": len(items), "manifestFilesS3Key": f"AWSDynamoDB/{export_id}/manifest-files.json",
        **summary}), encoding="utf-8")
    (root / "_started").write_text("", encoding="utf-8")
    return folder


# --------------------------------------------------------------------------- running


def tool(*args: Any, report: Path | None = None, timeout: float = 300) -> Any:
    return run_cli([str(a) for a in args], report=report, timeout=timeout)


def dry_args(*extra: Any, dump: Path) -> list[Any]:
    return ["--no-progress", *BUCKET_FLAGS, "--dump-items", dump, *extra]


def live_args(prod: Any, *extra: Any) -> list[Any]:
    return ["--no-dry-run", "--yes", "--no-progress", "--table", prod.name, "--endpoint-url", prod.url,
            "--region", REGION, *BUCKET_FLAGS, *extra]


def read_dump(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


def dump_items(path: Path) -> dict[Key, Item]:
    return by_key([json.loads(line) for line in read_dump(path)])


def assert_exact(actual: dict[Key, Item], expected: Sequence[Item], *, as_decimals: bool = False) -> None:
    """Same keys, identical items (N text exact unless the engine trims numbers)."""
    wanted = by_key(list(expected))
    assert set(actual) == set(wanted), (sorted(set(wanted) - set(actual))[:5],
                                        sorted(set(actual) - set(wanted))[:5])
    norm = canonical_item if as_decimals else (lambda i: i)
    bad = [k for k in wanted if norm(actual[k]) != norm(wanted[k])]
    assert not bad, f"{len(bad)} items differ, e.g. {bad[0]}: {actual[bad[0]]} != {wanted[bad[0]]}"


def assert_only_reads(proxy: FaultProxy, dev_table: str) -> None:
    operations = {op for op, _ in proxy.requests}
    assert operations, "the proxy saw no request: the source was not read through it"
    assert operations <= {"Query", "Scan"}, operations
    assert {payload.get("TableName") for _, payload in proxy.requests} == {dev_table}


# --------------------------------------------------------------------------- --source-table, live


@pytest.mark.parametrize("engine", ["ddblocal", "moto"])
def test_source_table_copies_every_image_exactly_and_only_reads(engine: str, request: pytest.FixtureRequest,
                                                                table_factory: Any, tmp_path: Path) -> None:
    server = request.getfixturevalue(f"{engine}_server")
    dev, prod = table_factory(server), table_factory(server)
    items = golden_dev_table_items()
    put_items(dev.client, dev.name, items)
    before = by_key(scan_all(dev.client, dev.name))
    with FaultProxy(server.url, rate=0.0) as proxy:
        r = tool(*live_args(prod, "--source-table", dev.name, "--source-endpoint-url", proxy.url),
                 report=tmp_path / "r.json")
    assert r.returncode == 0, r.describe()
    assert_exact(by_key(scan_all(prod.client, prod.name)), list(load_expected().values()),
                 as_decimals=engine == "ddblocal")
    after = by_key(scan_all(dev.client, dev.name))
    assert {k: canonical_item(v) for k, v in after.items()} == \
        {k: canonical_item(v) for k, v in before.items()}
    assert_only_reads(proxy, dev.name)
    excluded, other = extras_counts(EXTRA_NEVER, EXTRA_OTHER)
    assert r.report is not None
    assert r.report["images"]["copied"] == len(GOLDEN_IDS) and r.report["images"]["failed"] == 0
    assert r.report["excluded"] == excluded
    assert r.report["other_types"] == other
    assert "Other types in image partitions" in r.stdout and "RECEIPT_SECTION: 4" in r.stdout
    # the rest works unchanged: a re-run skips what prod has, --verify reads the dev table again
    source = ["--source-table", dev.name, "--source-endpoint-url", server.url]
    again = tool(*live_args(prod, *source), report=tmp_path / "again.json")
    assert again.returncode == 0 and again.report is not None, again.describe()
    assert again.report["images"]["skipped_existing"] == len(GOLDEN_IDS)
    assert again.report["items"]["written"] == 0
    verify = tool("--verify", "--table", prod.name, "--endpoint-url", prod.url, "--region", REGION,
                  *BUCKET_FLAGS, *source, report=tmp_path / "verify.json")
    assert verify.returncode == 0, verify.describe()
    assert verify.report is not None and verify.report["verify"]["images_checked"] == len(GOLDEN_IDS)
    status = tool("--status", "--table", prod.name, "--endpoint-url", prod.url, "--region", REGION,
                  *source, "--image-id", IMG_LEGACY, report=tmp_path / "status.json")
    assert status.returncode == 0 and status.report is not None, status.describe()
    legacy = [i["TYPE"]["S"] for i in load_expected([IMG_LEGACY]).values()]
    assert status.report["status"] == {"scope": f"1 image of {dev.name}",
                                       "lines_none": legacy.count("RECEIPT_LINE"),
                                       "words_none": legacy.count("RECEIPT_WORD"), "not_found": []}


@pytest.mark.parametrize("engine", ["ddblocal", "moto"])
def test_source_table_without_gsitype_scans_for_images(engine: str, request: pytest.FixtureRequest,
                                                       tmp_path: Path) -> None:
    from servers import make_client, table_definition, wait_table_active

    server = request.getfixturevalue(f"{engine}_server")
    client = make_client(server.url)
    name = f"receipts-notype-{uuid.uuid4().hex[:8]}"
    definition = table_definition(name, streams=False)
    definition["GlobalSecondaryIndexes"] = [g for g in definition["GlobalSecondaryIndexes"]
                                            if g["IndexName"] != "GSITYPE"]
    definition["AttributeDefinitions"] = [a for a in definition["AttributeDefinitions"]
                                          if a["AttributeName"] != "TYPE"]
    client.create_table(**definition)
    wait_table_active(client, name)
    put_items(client, name, [i for image_id in (IMG_VERBATIM, IMG_LEGACY) for i in dev_items(image_id)])
    with FaultProxy(server.url, rate=0.0) as proxy:
        r = tool(*dry_args("--source-table", name, "--source-endpoint-url", proxy.url,
                           dump=tmp_path / "d.jsonl"))
    assert r.returncode == 0, r.describe()
    assert_exact(dump_items(tmp_path / "d.jsonl"),
                 list(load_expected([IMG_VERBATIM, IMG_LEGACY]).values()))
    assert_only_reads(proxy, name)
    assert "Scan" in {op for op, _ in proxy.requests}
    if engine == "moto":  # DeleteTable makes DynamoDB Local slow; its memory goes with it
        client.delete_table(TableName=name)


# --------------------------------------------------------------------------- three sources, one result


def test_three_sources_give_identical_dumps(ddblocal_table: Any, tmp_path: Path) -> None:
    """Export files, the dev table (DynamoDB Local trims its numbers), a .jsonl.gz and an
    export-to-S3 folder shuffled over several files: the same prod items, byte for byte."""
    items = golden_dev_table_items()
    put_items(ddblocal_table.client, ddblocal_table.name, items)
    jsonl = write_jsonl_gz(tmp_path / "items.jsonl.gz", reversed(items))
    folder = write_s3_export(tmp_path / "s3", items, files=5)
    sources = {
        "export": ["--export-dir", GOLDEN_EXPORT],
        "table": ["--source-table", ddblocal_table.name, "--source-endpoint-url", ddblocal_table.url,
                  "--source-region", REGION],
        "jsonl": ["--source-items", jsonl],
        "s3": ["--source-items", folder],
    }
    dumps = {}
    for name, args in sources.items():
        r = tool(*dry_args(*args, dump=tmp_path / f"{name}.jsonl"), report=tmp_path / f"{name}.json")
        assert r.returncode == 0, (name, r.describe())
        dumps[name] = read_dump(tmp_path / f"{name}.jsonl")
        assert r.report is not None and r.report["images"]["copied"] == len(GOLDEN_IDS), name
    # Item sources order entities by SK within kind: their dumps are byte-identical.
    assert dumps["table"] == dumps["jsonl"] == dumps["s3"]
    # Export files keep the exporter's list order: the same lines, in another order.
    assert sorted(dumps["export"]) == sorted(dumps["table"])
    assert_exact(dump_items(tmp_path / "s3.jsonl"), list(load_expected().values()))


def test_shard_and_limit_work_on_item_sources(tmp_path: Path) -> None:
    jsonl = write_jsonl_gz(tmp_path / "items.jsonl.gz", golden_dev_table_items())
    seen: list[str] = []
    for k in range(3):
        r = tool(*dry_args("--source-items", jsonl, "--shard", f"{k}/3", dump=tmp_path / f"{k}.jsonl"),
                 report=tmp_path / "r.json")
        assert r.returncode == 0, r.describe()
        dump = read_dump(tmp_path / f"{k}.jsonl")
        seen += sorted({json.loads(line)["PK"]["S"][len("IMAGE#"):] for line in dump})
    assert sorted(seen) == sorted(GOLDEN_IDS)  # every image in exactly one shard
    r = tool(*dry_args("--source-items", jsonl, "--limit", "2", dump=tmp_path / "l.jsonl"),
             report=tmp_path / "r.json")
    assert r.returncode == 0 and r.report is not None, r.describe()
    assert r.report["images"]["copied"] == 2 and r.report["images"]["not_reached_limit"] == 3


def test_dump_items_output_is_readable_as_source_items(tmp_path: Path) -> None:
    first = tmp_path / "first.jsonl"
    r = tool(*dry_args("--export-dir", GOLDEN_EXPORT, dump=first))
    assert r.returncode == 0, r.describe()
    second = tmp_path / "second.jsonl"
    r = tool(*dry_args("--source-items", first, dump=second))
    assert r.returncode == 0, r.describe()
    assert sorted(read_dump(first)) == sorted(read_dump(second))


def test_source_items_counts_never_copy_and_other_types_offline(tmp_path: Path) -> None:
    """A dry run of --source-items needs no endpoint at all (none is reachable here)."""
    folder = write_s3_export(tmp_path / "s3", golden_dev_table_items(), files=3, seed=7)
    env = env_for_subprocess()
    env["AWS_ENDPOINT_URL_DYNAMODB"] = "http://127.0.0.1:9"  # nothing listens: any request fails
    r = run_cli([str(a) for a in dry_args("--source-items", folder, dump=tmp_path / "d.jsonl")],
                report=tmp_path / "r.json", env=env)
    assert r.returncode == 0, r.describe()
    excluded, other = extras_counts(EXTRA_NEVER, EXTRA_OTHER)
    assert r.report is not None
    assert r.report["excluded"] == excluded and r.report["other_types"] == other
    assert_exact(dump_items(tmp_path / "d.jsonl"), list(load_expected().values()))


# --------------------------------------------------------------------------- bad items


def corrupt(items: list[Item], sk: str, fn: Any) -> None:
    for item in items:
        if item["SK"]["S"] == sk:
            fn(item)
            return
    raise AssertionError(f"no item {sk}")


def bad_item_cases() -> dict[str, tuple[str, str, str]]:
    """image -> (SK, attribute, message fragment) of the one bad item it gets."""
    return {
        IMG_ROUNDING: ("RECEIPT#00001#LINE#00001", "GSI1PK", "does not round-trip"),
        IMG_VERBATIM: ("LINE#00001", "angle_degrees", "attribute is missing"),
        IMG_META_AND_PLACE: ("IMAGE", "width", "expected an integer"),
        IMG_LEGACY: ("RECEIPT#00001", "sha512", "not part of RECEIPT"),
    }


def test_bad_items_fail_only_their_image(tmp_path: Path) -> None:
    images = {image_id: dev_items(image_id) for image_id in GOLDEN_IDS}
    corrupt(images[IMG_ROUNDING], "RECEIPT#00001#LINE#00001",
            lambda i: i.update(GSI1PK={"S": "EMBEDDING_STATUS#PENDING"}, embedding_status={"S": "SUCCESS"}))
    corrupt(images[IMG_VERBATIM], "LINE#00001", lambda i: i.pop("angle_degrees"))
    corrupt(images[IMG_META_AND_PLACE], "IMAGE", lambda i: i.update(width={"S": "1200"}))
    corrupt(images[IMG_LEGACY], "RECEIPT#00001", lambda i: i.update(sha512={"S": "abc"}))
    # a key that does not have its kind's shape: a sixth image, a clone
    clone = str(uuid.uuid4())
    images[clone] = dev_items(IMG_VERBATIM, clone)
    corrupt(images[clone], "RECEIPT#00001", lambda i: i.update(SK={"S": "RECEIPT#1"}))
    # a partition without its IMAGE item
    headless = str(uuid.uuid4())
    images[headless] = [i for i in dev_items(IMG_LEGACY, headless) if i["SK"]["S"] != "IMAGE"]
    path = write_jsonl_gz(tmp_path / "items.jsonl.gz", [i for items in images.values() for i in items])
    r = tool(*dry_args("--source-items", path, dump=tmp_path / "d.jsonl"), report=tmp_path / "r.json")
    assert r.returncode == 1, r.describe()
    assert r.report is not None
    errors = {e["image_id"]: e for e in r.report["errors"]}
    assert set(errors) == {*bad_item_cases(), clone, headless}
    for image_id, (sk, attribute, fragment) in bad_item_cases().items():
        e = errors[image_id]
        assert sk in e["entity"] and f"IMAGE#{image_id}" in e["entity"], e
        assert e["field"] == attribute and fragment in e["message"], e
        line = next(line for line in r.stdout.splitlines() if image_id in line and sk in line)
        assert f"field {attribute!r}" in line, line
    assert errors[clone]["field"] == "SK" and "RECEIPT#1" in errors[clone]["message"]
    assert "no IMAGE item" in errors[headless]["message"]
    assert r.report["images"] == {**r.report["images"], "copied": 1, "failed": 6}
    assert_exact(dump_items(tmp_path / "d.jsonl"), list(load_expected([IMG_PLACE_EMPTY_ID]).values()))


# --------------------------------------------------------------------------- selecting images


def test_image_id_and_ids_file_select_exactly_those_images(tmp_path: Path) -> None:
    jsonl = write_jsonl_gz(tmp_path / "items.jsonl.gz", golden_dev_table_items())
    ids_file = tmp_path / "ids.txt"
    ids_file.write_text(f"{IMG_LEGACY}\n\n{IMG_VERBATIM}\n", encoding="utf-8")
    cases: dict[str, tuple[list[Any], list[str]]] = {
        "one": (["--image-id", IMG_ROUNDING], [IMG_ROUNDING]),
        "two": (["--image-id", IMG_ROUNDING, "--image-id", IMG_META_AND_PLACE],
                [IMG_ROUNDING, IMG_META_AND_PLACE]),
        "file": (["--image-ids-file", ids_file], [IMG_LEGACY, IMG_VERBATIM]),
        "both": (["--image-id", IMG_ROUNDING, "--image-ids-file", ids_file],
                 [IMG_ROUNDING, IMG_LEGACY, IMG_VERBATIM]),
    }
    for name, (flags, wanted) in cases.items():
        for source in (["--source-items", jsonl], ["--export-dir", GOLDEN_EXPORT]):
            dump = tmp_path / f"{name}.jsonl"
            r = tool(*dry_args(*source, *flags, dump=dump), report=tmp_path / "r.json")
            assert r.returncode == 0, (name, r.describe())
            assert_exact(dump_items(dump), list(load_expected(wanted).values()))
            assert r.report is not None and r.report["images"]["total"] == len(wanted)
    # an id the source does not hold fails that image alone
    missing = str(uuid.uuid4())
    r = tool(*dry_args("--source-items", jsonl, "--image-id", missing, "--image-id", IMG_LEGACY,
                       dump=tmp_path / "m.jsonl"), report=tmp_path / "r.json")
    assert r.returncode == 1 and r.report is not None
    assert r.report["failed_images"] == [missing] and r.report["images"]["copied"] == 1
    bad = tool("--source-items", jsonl, "--image-id", "not-a-uuid")
    assert bad.returncode == 2 and "not-a-uuid" in bad.stderr


def test_image_ids_match_in_any_case_with_every_source(moto_server: Any, table_factory: Any,
                                                     tmp_path: Path) -> None:
    """An id given in upper case selects its image (files and keys are spelled in lower case),
    the same id twice in two cases is one image, and an id the source lacks fails as an image
    named as missing while the others are planned."""
    jsonl = write_jsonl_gz(tmp_path / "items.jsonl.gz", golden_dev_table_items())
    dev = table_factory(moto_server)
    put_items(dev.client, dev.name, dev_items(IMG_LEGACY))
    ids_file = tmp_path / "ids.txt"
    ids_file.write_text(f"{IMG_LEGACY}\n{IMG_LEGACY.upper()}\n", encoding="utf-8")
    missing = str(uuid.uuid4())
    sources = {"export": ["--export-dir", GOLDEN_EXPORT], "items": ["--source-items", jsonl],
               "table": ["--source-table", dev.name, "--source-endpoint-url", dev.url,
                         "--region", REGION]}
    for name, source in sources.items():
        dump = tmp_path / f"{name}.jsonl"
        r = tool(*dry_args(*source, "--image-id", IMG_LEGACY.upper(), "--image-ids-file", ids_file,
                           dump=dump), report=tmp_path / "r.json")
        assert r.returncode == 0, (name, r.describe())
        assert r.report is not None and r.report["images"]["total"] == 1, name
        assert_exact(dump_items(dump), list(load_expected([IMG_LEGACY]).values()))
        r = tool(*dry_args(*source, "--image-id", missing, "--image-id", IMG_LEGACY.upper(),
                           dump=dump), report=tmp_path / "r.json")
        assert r.returncode == 1 and r.report is not None, (name, r.describe())
        assert r.report["failed_images"] == [missing], name
        assert r.report["images"]["copied"] == 1, name
        assert "vanished" not in r.output, (name, r.describe())
    r = tool(*dry_args("--export-dir", GOLDEN_EXPORT, "--image-id", missing.upper(), dump=dump))
    assert r.returncode == 1 and f"ERROR {missing.upper()}: not in the export {GOLDEN_EXPORT}" in r.stderr, \
        r.describe()


def test_source_table_image_ids_query_only_those_partitions(moto_server: Any, table_factory: Any,
                                                            tmp_path: Path) -> None:
    dev = table_factory(moto_server)
    put_items(dev.client, dev.name, golden_dev_table_items())
    with FaultProxy(moto_server.url, rate=0.0) as proxy:
        r = tool(*dry_args("--source-table", dev.name, "--source-endpoint-url", proxy.url,
                           "--image-id", IMG_LEGACY, dump=tmp_path / "d.jsonl"))
    assert r.returncode == 0, r.describe()
    assert_exact(dump_items(tmp_path / "d.jsonl"), list(load_expected([IMG_LEGACY]).values()))
    keys = [p["ExpressionAttributeValues"][":pk"]["S"] for op, p in proxy.requests if op == "Query"]
    assert keys == [f"IMAGE#{IMG_LEGACY}"], proxy.requests  # no listing, one partition


# --------------------------------------------------------------------------- refusals


def test_refusals(tmp_path: Path) -> None:
    ion = tmp_path / "ion"
    write_s3_export(ion, dev_items(IMG_LEGACY), files=1, outputFormat="ION")
    r = tool("--source-items", ion)
    assert r.returncode == 2 and "ION" in r.stderr and "DYNAMODB_JSON" in r.stderr
    r = tool("--source-table", "receipts-prod", "--table", "receipts-prod")
    assert r.returncode == 2 and "prod table" in r.stderr
    r = tool("--source-table", "receipts-a", "--export-dir", GOLDEN_EXPORT)
    assert r.returncode == 2 and "one source" in r.stderr
    r = tool("--source-items", tmp_path / "nothing-here.jsonl")
    assert r.returncode == 2 and "no such file" in r.stderr
    r = tool("--export-dir", GOLDEN_EXPORT, "--source-endpoint-url", "http://127.0.0.1:9")
    assert r.returncode == 2 and "--source-table" in r.stderr
    # an export whose data files hold fewer items than its manifest says (incomplete download)
    short = write_s3_export(tmp_path / "short", dev_items(IMG_LEGACY), files=2)
    next(short.rglob("*.json.gz")).write_bytes(gzip.compress(b""))
    r = tool("--source-items", short)
    assert r.returncode == 2 and "incomplete download" in r.stderr
    # a corrupt line refuses the run: it could belong to any image
    broken = tmp_path / "broken.jsonl"
    broken.write_text(json.dumps(dev_items(IMG_LEGACY)[0]) + "\n{not json\n", encoding="utf-8")
    r = tool("--source-items", broken)
    assert r.returncode == 2 and "line 2" in r.stderr


# --------------------------------------------------------------------------- done when


def test_done_when_unseen_images_from_the_dev_table_and_an_s3_export(ddblocal_server: Any, table_factory: Any,
                                                                      tmp_path: Path) -> None:
    """Clones of the golden images under new ids, with never-copy and other-type items in
    some partitions: --source-table leaves prod exact and the dev table untouched; the same
    items as an export-to-S3 folder give the same prod table through --source-items."""
    rng = random.Random(12)
    clones = [(image_id, str(uuid.UUID(int=rng.getrandbits(128), version=4)))
              for image_id in GOLDEN_IDS for _ in range(3)]
    items: list[Item] = []
    expected: list[Item] = []
    for n, (image_id, new_id) in enumerate(clones):
        items += dev_items(image_id, new_id)
        expected += expected_prod(image_id, new_id)
        if n % 4 == 0:
            items += never_copy_items(new_id)
        if n % 3 == 0:
            items += other_type_items(new_id)
    items += outside_items()
    excluded, other = extras_counts([c for n, (_, c) in enumerate(clones) if n % 4 == 0],
                                    [c for n, (_, c) in enumerate(clones) if n % 3 == 0])
    dev, prod = table_factory(ddblocal_server), table_factory(ddblocal_server)
    put_items(dev.client, dev.name, items)
    before = {k: canonical_item(v) for k, v in by_key(scan_all(dev.client, dev.name)).items()}
    with FaultProxy(ddblocal_server.url, rate=0.0) as proxy:
        r = tool(*live_args(prod, "--source-table", dev.name, "--source-endpoint-url", proxy.url),
                 report=tmp_path / "table.json")
    assert r.returncode == 0, r.describe()
    assert_exact(by_key(scan_all(prod.client, prod.name)), expected, as_decimals=True)
    assert {k: canonical_item(v) for k, v in by_key(scan_all(dev.client, dev.name)).items()} == before
    assert_only_reads(proxy, dev.name)
    assert r.report is not None
    assert r.report["images"]["copied"] == len(clones)
    assert r.report["excluded"] == excluded and r.report["other_types"] == other

    folder = write_s3_export(tmp_path / "s3", items, files=6, seed=3)
    prod2 = table_factory(ddblocal_server)
    r = tool(*live_args(prod2, "--source-items", folder), report=tmp_path / "items.json")
    assert r.returncode == 0, r.describe()
    first = by_key(scan_all(prod.client, prod.name))
    second = by_key(scan_all(prod2.client, prod2.name))
    assert second == first  # the same engine stores the same items the same way
    assert r.report is not None
    assert r.report["excluded"] == excluded and r.report["other_types"] == other


# --------------------------------------------------------------------------- memory


RSS_WRAPPER = (
    "import resource, subprocess, sys\n"
    "rc = subprocess.call(sys.argv[2:])\n"
    "open(sys.argv[1], 'w').write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss))\n"
    "sys.exit(rc)\n"
)


def peak_rss_kb(args: Sequence[Any], tmp_path: Path) -> int:
    out = tmp_path / f"rss-{uuid.uuid4().hex}"
    proc = subprocess.run([sys.executable, "-c", RSS_WRAPPER, str(out), sys.executable, str(TOOL),
                           *map(str, args)], env=env_for_subprocess(), capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return int(out.read_text())


def test_peak_rss_of_a_20x_larger_item_export(tmp_path: Path) -> None:
    """Grouping items by image spills to disk: memory does not grow with the export."""
    def export(copies: int, folder: Path) -> Path:
        items = [i for n in range(copies) for image_id in GOLDEN_IDS
                 for i in dev_items(image_id, str(uuid.uuid5(uuid.NAMESPACE_URL, f"{n}-{image_id}")))]
        return write_s3_export(folder, items, files=8)
    flags = [*BUCKET_FLAGS, "--no-progress"]
    small = peak_rss_kb(["--source-items", export(1, tmp_path / "small"), *flags], tmp_path)
    big = peak_rss_kb(["--source-items", export(20, tmp_path / "big"), *flags], tmp_path)
    print(f"peak RSS small {small / 1024:.0f} MB, 20x {big / 1024:.0f} MB, ratio {big / small:.2f}")
    assert big <= 1.3 * small, (small, big)


def test_golden_fixture_sanity() -> None:
    """The dev items really differ from prod where the rules act (else the tests prove nothing)."""
    dev = {(i["PK"]["S"], i["SK"]["S"]): i for image_id in GOLDEN_IDS for i in dev_items(image_id)}
    prod = load_expected()
    changed = {k for k in prod if dev[k] != prod[k]}
    statuses = {dev[k]["GSI1PK"]["S"] for k in changed if "GSI1PK" in dev[k]}
    assert {"EMBEDDING_STATUS#SUCCESS", "EMBEDDING_STATUS#PENDING", "EMBEDDING_STATUS#FAILED"} <= statuses
    assert any(dev[k].get("raw_s3_bucket") == {"S": "dev-raw-bucket"} for k in changed)
