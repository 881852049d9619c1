"""--copy-objects: the S3 objects the items point to go from the dev buckets to the prod ones
with their images (issue 22), on the session's moto server (DynamoDB and S3).

Each test has an export of its own whose bucket names are unique (``objects_scenario``), so
the tests never see each other's objects. What the items reference is computed from the
export JSON, not with the tool's code; the tests assert on what ends up in the buckets and
the table.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

from cli import CliResult, kill_9, kill_if_running, run_cli, summary_errors, tool_command
from conftest import TableHandle
from items import (
    IMG_ROUNDING,
    IMG_VERBATIM,
    assert_items_equal,
    by_image,
    image_of,
    incomplete_marked_images,
    table_items,
)
from objects_scenario import Obj, Scenario, make_scenario
from servers import REGION, env_for_subprocess
from waiting import wait_for

MIB = 1024 * 1024


def args_of(sc: Scenario, table: TableHandle, *extra: str, live: bool = True) -> list[str]:
    """A copy of the scenario's export into ``table`` with --copy-objects (S3: the same moto
    server, by default, as --endpoint-url is not AWS)."""
    return [*(("--no-dry-run", "--yes") if live else ()), "--table", table.name,
            "--endpoint-url", table.url, "--region", REGION, "--export-dir", str(sc.export),
            *sc.bucket_flags, "--no-progress", "--copy-objects", *extra]


def run(sc: Scenario, table: TableHandle, tmp_path: Path, name: str, *extra: str,
        live: bool = True, code: int = 0) -> CliResult:
    result = run_cli(args_of(sc, table, *extra, live=live), report=tmp_path / f"{name}.json")
    assert result.returncode == code, result.describe()
    assert "Traceback" not in result.output, result.describe()
    assert result.report is not None, result.describe()
    return result


def objects_of(result: CliResult) -> dict[str, Any]:
    assert result.report is not None
    objects: dict[str, Any] = result.report["objects"]
    return objects


def objects_line(result: CliResult) -> str:
    lines = [line for line in result.stdout.splitlines() if line.startswith("Objects:")]
    assert len(lines) == 1, result.describe()
    return lines[0]


def size(sc: Scenario, objs: set[Obj]) -> int:
    return sum(len(sc.bodies[o]) for o in objs)


def delete_image_items(table: TableHandle, ids: list[str] | None = None) -> None:
    """Take the IMAGE items out of prod: the images look unfinished (as after a kill between
    the objects and the IMAGE item), so the next run goes through their objects again."""
    for key in table_items(table.client, table.name):
        if key[1] == "IMAGE" and (ids is None or image_of(key) in ids):
            table.client.delete_item(TableName=table.name,
                                     Key={"PK": {"S": key[0]}, "SK": {"S": key[1]}})


# --------------------------------------------------------------------------- copies


def test_live_run_copies_exactly_the_referenced_objects_and_a_rerun_copies_none(
        fresh_table: TableHandle, tmp_path: Path) -> None:
    sc = make_scenario(fresh_table.url, tmp_path)
    sc.seed()
    refs = sc.all_refs
    assert len(refs) == 154  # independent count: 5 images, their receipts, non-empty keys

    first = run(sc, fresh_table, tmp_path, "first")
    assert_items_equal(table_items(fresh_table.client, fresh_table.name), sc.expected)
    sc.assert_prod_exact()  # exactly the referenced keys, bytes, type, cache, metadata, ETag
    assert sc.writes() == sc.written_once()  # each copied once
    assert objects_of(first) == {"referenced": len(refs), "copied": len(refs), "already_present": 0,
                                 "missing_in_source": 0, "bytes_copied": size(sc, refs),
                                 "checked": True}, first.report
    assert first.report is not None and first.report["missing_objects"] == []
    assert objects_line(first) == (f"Objects: {len(refs)} referenced, {len(refs)} copied "
                                   f"({size(sc, refs):,} bytes), 0 already in prod, "
                                   "0 missing in the source")
    # the dev buckets are only read
    assert {(b, k) for b in (sc.dev_raw, sc.dev_cdn) for k in sc.listing(b)} >= refs

    # a plain re-run: every image is complete in prod (its IMAGE item), none is looked at again
    again = run(sc, fresh_table, tmp_path, "again")
    assert again.report is not None and again.report["images"]["skipped_existing"] == 5, again.report
    assert objects_of(again)["copied"] == 0, again.report
    assert objects_of(again)["bytes_copied"] == 0, again.report
    assert objects_of(again)["already_present"] == objects_of(again)["referenced"], again.report
    assert sc.writes() == sc.written_once()

    # the same with the images not finished in prod: every object is looked at, none copied
    delete_image_items(fresh_table)
    third = run(sc, fresh_table, tmp_path, "third")
    assert objects_of(third) == {"referenced": len(refs), "copied": 0, "already_present": len(refs),
                                 "missing_in_source": 0, "bytes_copied": 0, "checked": True}, third.report
    assert sc.writes() == sc.written_once()
    sc.assert_prod_exact()
    assert_items_equal(table_items(fresh_table.client, fresh_table.name), sc.expected)


def test_present_objects_are_kept_and_different_ones_copied_again(
        fresh_table: TableHandle, tmp_path: Path) -> None:
    sc = make_scenario(fresh_table.url, tmp_path, ids=[IMG_VERBATIM])
    sc.seed()
    refs = sorted(sc.all_refs)
    same, longer, same_size = refs[0], refs[1], refs[2]
    marker = {"Metadata": {"marker": "prod"}}
    # prod holds one object as dev has it (but with metadata of its own), one with a different
    # size, and one of the same size but other bytes
    sc.s3.put_object(Bucket=sc.prod_of[same[0]], Key=same[1], Body=sc.bodies[same], **marker)
    sc.s3.put_object(Bucket=sc.prod_of[longer[0]], Key=longer[1], Body=sc.bodies[longer] + b"x", **marker)
    other = bytes(b ^ 0xFF for b in sc.bodies[same_size])
    sc.s3.put_object(Bucket=sc.prod_of[same_size[0]], Key=same_size[1], Body=other, **marker)

    result = run(sc, fresh_table, tmp_path, "run")
    copied = set(refs) - {same}
    assert objects_of(result)["copied"] == len(copied), result.report
    assert objects_of(result)["already_present"] == 1, result.report
    assert objects_of(result)["bytes_copied"] == size(sc, copied), result.report
    # not copied: written once (by the test), prod's own metadata still there; the others
    # were written once more (by the copy)
    assert sc.writes() == {**sc.written_once(), **dict.fromkeys(map(sc.prod_obj, [longer, same_size]), 2)}
    assert sc.head(sc.prod_obj(same))["Metadata"] == marker["Metadata"]
    # the others are dev's, byte for byte, headers included
    sc.assert_prod_exact(copied, also=[same])
    assert sc.body(sc.prod_obj(same)) == sc.bodies[same]
    assert_items_equal(table_items(fresh_table.client, fresh_table.name), sc.expected)


def test_object_uploaded_in_parts_keeps_its_etag_and_is_not_copied_again(
        fresh_table: TableHandle, tmp_path: Path) -> None:
    sc = make_scenario(fresh_table.url, tmp_path, ids=[IMG_VERBATIM])
    sc.seed()
    big = (sc.dev_raw, f"raw/{IMG_VERBATIM}.png")
    assert big in sc.all_refs
    parts = [os.urandom(5 * MIB), os.urandom(5 * MIB), os.urandom(1234)]
    upload = sc.s3.create_multipart_upload(Bucket=big[0], Key=big[1], **sc.headers(big, 7))["UploadId"]
    done = [{"PartNumber": n, "ETag": sc.s3.upload_part(Bucket=big[0], Key=big[1], UploadId=upload,
                                                        PartNumber=n, Body=body)["ETag"]}
            for n, body in enumerate(parts, 1)]
    sc.s3.complete_multipart_upload(Bucket=big[0], Key=big[1], UploadId=upload,
                                    MultipartUpload={"Parts": done})
    sc.bodies[big] = b"".join(parts)
    source = sc.head(big)
    assert source["ETag"].endswith('-3"'), source["ETag"]

    first = run(sc, fresh_table, tmp_path, "first")
    twin = sc.head(sc.prod_obj(big))
    assert (twin["ETag"], twin["ContentLength"]) == (source["ETag"], len(sc.bodies[big])), twin
    assert sc.body(sc.prod_obj(big)) == sc.bodies[big]
    sc.assert_prod_exact()
    assert objects_of(first)["copied"] == len(sc.all_refs), first.report
    assert objects_of(first)["bytes_copied"] == size(sc, sc.all_refs), first.report
    assert_items_equal(table_items(fresh_table.client, fresh_table.name), sc.expected)

    # a re-run that looks at every object again (the image unfinished in prod) copies none
    delete_image_items(fresh_table)
    again = run(sc, fresh_table, tmp_path, "again")
    assert objects_of(again)["copied"] == 0, again.report
    assert objects_of(again)["already_present"] == len(sc.all_refs), again.report
    assert sc.writes() == sc.written_once()
    assert sc.head(sc.prod_obj(big))["ETag"] == source["ETag"]
    assert_items_equal(table_items(fresh_table.client, fresh_table.name), sc.expected)


# --------------------------------------------------------------------------- missing objects


def test_missing_source_object_fails_only_its_image(fresh_table: TableHandle, tmp_path: Path) -> None:
    sc = make_scenario(fresh_table.url, tmp_path)
    missing = (sc.dev_cdn, f"assets/{IMG_ROUNDING}_RECEIPT_00002_small.webp")
    assert missing in sc.refs[IMG_ROUNDING]
    sc.seed(skip=[missing])

    result = run(sc, fresh_table, tmp_path, "run", code=1)
    text = "\n".join([*summary_errors(result.stdout), result.stderr])
    assert missing[0] in text and missing[1] in text, result.describe()
    assert result.report is not None
    assert result.report["failed_images"] == [IMG_ROUNDING], result.report
    messages = [e["message"] for e in result.report["errors"] if e["image_id"] == IMG_ROUNDING]
    assert any(f"s3://{missing[0]}/{missing[1]}" in m for m in messages), result.report["errors"]
    assert objects_of(result)["missing_in_source"] == 1, result.report
    assert result.report["missing_objects"] == [], result.report  # not allowed: an error, not a warning

    table = table_items(fresh_table.client, fresh_table.name)
    assert not [k for k in table if image_of(k) == IMG_ROUNDING], "items of the failed image written"
    others = {k: v for k, v in sc.expected.items() if image_of(k) != IMG_ROUNDING}
    assert_items_equal(table, others)
    in_prod = sc.prod_objects()
    assert in_prod >= sc.expected_prod(set().union(*(r for i, r in sc.refs.items() if i != IMG_ROUNDING)))
    assert in_prod <= sc.expected_prod() - {sc.prod_obj(missing)}

    allowed = run(sc, fresh_table, tmp_path, "allowed", "--allow-missing-objects")
    assert allowed.report is not None
    assert allowed.report["missing_objects"] == [
        {"bucket": missing[0], "key": missing[1], "error": allowed.report["missing_objects"][0]["error"]}
    ], allowed.report
    assert allowed.report["missing_objects"][0]["error"], allowed.report
    assert objects_of(allowed)["missing_in_source"] == 1, allowed.report
    assert allowed.report["images"]["copied"] == 1, allowed.report["images"]
    assert_items_equal(table_items(fresh_table.client, fresh_table.name), sc.expected)
    sc.assert_prod_exact(sc.all_refs - {missing})
    assert "missing in the source" in objects_line(allowed)


def test_allow_missing_objects_needs_copy_objects(fresh_table: TableHandle, tmp_path: Path) -> None:
    sc = make_scenario(fresh_table.url, tmp_path, ids=[IMG_VERBATIM])
    args = [a for a in args_of(sc, fresh_table, "--allow-missing-objects") if a != "--copy-objects"]
    result = run_cli(args)
    assert result.returncode == 2, result.describe()
    assert "--allow-missing-objects" in result.output, result.describe()
    assert table_items(fresh_table.client, fresh_table.name) == {}


# --------------------------------------------------------------------------- dry run


def test_dry_run_counts_equal_the_live_runs_and_it_writes_nothing(
        fresh_table: TableHandle, tmp_path: Path) -> None:
    sc = make_scenario(fresh_table.url, tmp_path, ids=[IMG_ROUNDING, IMG_VERBATIM])
    refs = sorted(sc.all_refs)
    missing, present, longer = refs[0], refs[1], refs[2]
    sc.seed(skip=[missing])
    sc.s3.copy_object(Bucket=sc.prod_of[present[0]], Key=present[1],
                      CopySource={"Bucket": present[0], "Key": present[1]})
    sc.s3.put_object(Bucket=sc.prod_of[longer[0]], Key=longer[1], Body=sc.bodies[longer] * 2)
    before = sc.writes()

    dry = run(sc, fresh_table, tmp_path, "dry", "--allow-missing-objects", live=False)
    planned = objects_of(dry)
    to_copy = sc.all_refs - {missing, present}
    assert planned["referenced"] == len(refs), planned
    assert (planned["to_copy"], planned["already_present"], planned["missing_in_source"],
            planned["bytes_to_copy"]) == (len(to_copy), 1, 1, size(sc, to_copy)), planned
    assert planned["copied"] == 0 and planned["bytes_copied"] == 0, planned
    assert sc.writes() == before  # nothing written
    assert table_items(fresh_table.client, fresh_table.name) == {}
    assert objects_line(dry).startswith(f"Objects: {len(refs)} referenced, {len(to_copy)} to copy")

    live = run(sc, fresh_table, tmp_path, "live", "--allow-missing-objects")
    done = objects_of(live)
    assert (done["copied"], done["already_present"], done["missing_in_source"], done["bytes_copied"]) == (
        planned["to_copy"], planned["already_present"], planned["missing_in_source"],
        planned["bytes_to_copy"]), (planned, done)
    sc.assert_prod_exact(sc.all_refs - {missing})
    assert sc.writes() == {**sc.written_once(sc.all_refs - {missing}), sc.prod_obj(longer): 2}
    assert_items_equal(table_items(fresh_table.client, fresh_table.name), sc.expected)


# --------------------------------------------------------------------------- kill -9


def test_kill_during_object_copies_then_rerun_is_complete_and_exact(
        fresh_table: TableHandle, tmp_path: Path) -> None:
    sc = make_scenario(fresh_table.url, tmp_path, copies=2)  # 10 images, 308 objects
    sc.seed()
    total = len(sc.all_refs)
    args = args_of(sc, fresh_table, "--max-workers", "1")
    proc = subprocess.Popen(tool_command(args), env=env_for_subprocess(), stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        copied = wait_for(lambda: len(sc.prod_objects()) >= 30 or None, timeout=60,
                          what="the first objects in prod",
                          give_up=lambda: None if proc.poll() is None else f"exit {proc.returncode}")
        assert copied
        kill_9(proc)
    finally:
        kill_if_running(proc)
    in_prod = sc.prod_objects()
    assert 30 <= len(in_prod) < total, len(in_prod)
    assert in_prod <= sc.expected_prod()
    # an IMAGE item in prod means its objects are there too, and its items
    table = table_items(fresh_table.client, fresh_table.name)
    for image_id in by_image(table):
        if (f"IMAGE#{image_id}", "IMAGE") in table:
            assert sc.expected_prod(sc.refs[image_id]) <= in_prod, image_id
    assert incomplete_marked_images(fresh_table.client, fresh_table.name, sc.expected) == []

    rerun = run(sc, fresh_table, tmp_path, "rerun", "--max-workers", "4")
    assert_items_equal(table_items(fresh_table.client, fresh_table.name), sc.expected)
    sc.assert_prod_exact()
    assert sc.writes() == sc.written_once()  # none copied twice, across the kill
    o = objects_of(rerun)
    assert o["copied"] + o["already_present"] == o["referenced"], o
    assert o["copied"] <= total - len(in_prod), o  # what the killed run copied is not copied again


# --------------------------------------------------------------------------- credentials, checks


def profile_env(tmp_path: Path, url: str) -> dict[str, str]:
    """Two AWS profiles, dev and prod, in config files of their own (moto accepts any key)."""
    config, credentials = tmp_path / "aws-config", tmp_path / "aws-credentials"
    config.write_text(f"[profile dev]\nregion = {REGION}\n[profile prod]\nregion = {REGION}\n")
    credentials.write_text("[dev]\naws_access_key_id = devkey\naws_secret_access_key = devsecret\n"
                           "[prod]\naws_access_key_id = prodkey\naws_secret_access_key = prodsecret\n")
    env = env_for_subprocess(url)
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        env.pop(name, None)
    env.update(AWS_CONFIG_FILE=str(config), AWS_SHARED_CREDENTIALS_FILE=str(credentials))
    return env


def test_source_profile_streams_every_object_and_an_object_in_parts_keeps_its_etag(
        fresh_table: TableHandle, tmp_path: Path) -> None:
    """--source-profile: the dev buckets are read with their own credentials, every object is
    streamed through the tool; one uploaded in parts is written in the same parts, so its
    ETag is the source's and a re-run copies nothing."""
    sc = make_scenario(fresh_table.url, tmp_path)
    sc.seed()
    big = sorted(sc.all_refs)[0]
    s3 = sc.s3
    upload = s3.create_multipart_upload(Bucket=big[0], Key=big[1], ContentType="image/png")
    parts = []
    for n, body in enumerate((b"a" * (5 * MIB), b"b" * 777), 1):
        etag = s3.upload_part(Bucket=big[0], Key=big[1], UploadId=upload["UploadId"], PartNumber=n,
                              Body=body)["ETag"]
        parts.append({"PartNumber": n, "ETag": etag})
    s3.complete_multipart_upload(Bucket=big[0], Key=big[1], UploadId=upload["UploadId"],
                                 MultipartUpload={"Parts": parts})
    env = profile_env(tmp_path, fresh_table.url)
    args = [*args_of(sc, fresh_table), "--profile", "prod", "--source-profile", "dev"]
    first = run_cli(args, env=env, report=tmp_path / "first.json")
    assert first.returncode == 0, first.describe()
    refs = sc.all_refs
    assert objects_of(first)["copied"] == len(refs), first.report
    target = sc.prod_obj(big)
    assert s3.head_object(Bucket=target[0], Key=target[1])["ETag"] == \
        s3.head_object(Bucket=big[0], Key=big[1])["ETag"]
    assert s3.get_object(Bucket=target[0], Key=target[1])["Body"].read() == b"a" * (5 * MIB) + b"b" * 777
    others = {o for o in refs if o != big}
    sc.assert_prod_exact(others, also=[big])
    assert_items_equal(table_items(fresh_table.client, fresh_table.name), sc.expected)
    delete_image_items(fresh_table)
    again = run_cli(args, env=env, report=tmp_path / "again.json")
    assert again.returncode == 0, again.describe()
    assert objects_of(again)["copied"] == 0 and objects_of(again)["already_present"] == len(refs)


def test_verify_and_status_find_an_object_deleted_in_prod(fresh_table: TableHandle, tmp_path: Path) -> None:
    sc = make_scenario(fresh_table.url, tmp_path)
    sc.seed()
    run(sc, fresh_table, tmp_path, "copy")
    gone = sc.prod_obj(sorted(sc.all_refs)[3])
    sc.s3.delete_object(Bucket=gone[0], Key=gone[1])
    checks = ["--table", fresh_table.name, "--endpoint-url", fresh_table.url, "--region", REGION,
              "--export-dir", str(sc.export), *sc.bucket_flags, "--copy-objects"]
    verify = run_cli(["--verify", *checks])
    assert verify.returncode == 1, verify.describe()
    assert f"s3://{gone[0]}/{gone[1]}: missing in prod" in verify.stdout, verify.describe()
    repair = next(line for line in verify.stdout.splitlines()
                  if line.startswith("To copy the missing objects: "))
    assert "--copy-objects" in repair and "--no-skip-existing" in repair
    status = run_cli(["--status", *checks])
    assert status.returncode == 0, status.describe()
    assert f"objects missing in prod's buckets: 1 of {len(sc.all_refs)} referenced" in status.stdout
