"""After the copy: --trigger-embeddings, --status, --verify, --limit, --shard and the rate cap,
each run as the CLI: on DynamoDB Local, except --trigger-embeddings, which needs Step Functions
and so runs on moto (DynamoDB and Step Functions on one endpoint)."""

from __future__ import annotations

import shutil
import time
import uuid
import zlib
from pathlib import Path
from typing import Any

import pytest
from cli import BUCKET_FLAGS, CliResult, live_args, run_cli, run_on_pty
from conftest import TableHandle
from exports import copy_golden, fake_uuid, multiplied_export, write_export
from items import (
    DEV_EXPORT,
    GOLDEN_EXPORT,
    GOLDEN_IDS,
    Item,
    Key,
    assert_items_equal,
    assert_table_equals,
    by_key,
    image_of,
    load_expected,
    read_jsonl,
    table_items,
)
from servers import (
    README_MACHINES,
    REGION,
    DDBLocalServer,
    MotoServer,
    create_pass_machines,
    env_for_subprocess,
    make_service_client,
)

LINES = 81  # golden RECEIPT_LINE items
WORDS = 205  # golden RECEIPT_WORD items


def sfn_client(url: str) -> Any:
    return make_service_client(url, "stepfunctions")


def make_machines(url: str) -> tuple[str, str]:
    """Two fresh state machines (names are global on the shared moto server)."""
    suffix = uuid.uuid4().hex[:8]
    line, word = create_pass_machines(url, tuple(f"{name}-{suffix}" for name in README_MACHINES))
    return line, word


def executions(url: str, name: str) -> list[dict[str, Any]]:
    sfn = sfn_client(url)
    arn = next(m["stateMachineArn"] for m in sfn.list_state_machines()["stateMachines"] if m["name"] == name)
    return [
        sfn.describe_execution(executionArn=e["executionArn"])
        for e in sfn.list_executions(stateMachineArn=arn)["executions"]
    ]


def copy_golden_into(table: TableHandle, tmp_path: Path, *extra: str) -> CliResult:
    result = run_cli(live_args(table.name, table.url, GOLDEN_EXPORT, *extra), report=tmp_path / "copy.json")
    assert result.returncode == 0, result.describe()
    return result


# --- --trigger-embeddings ------------------------------------------------------------------


def test_trigger_embeddings_after_copy_starts_both_once(fresh_table: TableHandle, tmp_path: Path) -> None:
    line, word = make_machines(fresh_table.url)
    machines = ["--line-state-machine", line, "--word-state-machine", word]
    first = copy_golden_into(fresh_table, tmp_path, "--trigger-embeddings", *machines)
    assert first.report is not None
    started = first.report["embeddings"]
    assert [e["started"] for e in started] == [True, True]
    for name, entry in zip((line, word), started):
        runs = executions(fresh_table.url, name)
        assert len(runs) == 1
        assert runs[0]["input"] == "{}"
        assert runs[0]["executionArn"] == entry["execution_arn"]
        assert entry["execution_arn"] in first.stdout

    # moto keeps executions RUNNING: a second trigger must not start another one.
    again = copy_golden_into(fresh_table, tmp_path, "--trigger-embeddings", *machines)
    assert again.report is not None
    assert [e["started"] for e in again.report["embeddings"]] == [False, False]
    assert "still running" in again.stdout
    assert len(executions(fresh_table.url, line)) == 1
    assert len(executions(fresh_table.url, word)) == 1


def test_trigger_embeddings_accepts_arns_and_runs_alone(moto_server: MotoServer, tmp_path: Path) -> None:
    line, word = make_machines(moto_server.url)
    sfn = sfn_client(moto_server.url)
    arns = {m["name"]: m["stateMachineArn"] for m in sfn.list_state_machines()["stateMachines"]}
    # No export dir here and no table: nothing to copy, only the trigger.
    proc = run_cli(
        [
        "--trigger-embeddings",
        "--no-dry-run",
        "--yes",
        "--no-progress",
        "--endpoint-url",
        moto_server.url,
        "--region",
        REGION,
        "--line-state-machine",
        arns[line],
        "--word-state-machine",
        arns[word],
        ],
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.describe()
    assert proc.stdout.count("Started the") == 2
    assert len(executions(moto_server.url, line)) == 1
    assert len(executions(moto_server.url, word)) == 1


def test_no_trigger_when_an_image_failed(fresh_table: TableHandle, tmp_path: Path) -> None:
    line, word = make_machines(fresh_table.url)
    export = tmp_path / "export"
    bad = copy_golden(export)[0]
    bad.write_text(bad.read_text(encoding="utf-8")[:500], encoding="utf-8")  # truncated
    result = run_cli(
        live_args(
            fresh_table.name,
            fresh_table.url,
            export,
            "--trigger-embeddings",
            "--line-state-machine",
            line,
            "--word-state-machine",
            word,
        )
    )
    assert result.returncode == 1, result.describe()
    assert "Not starting embeddings" in result.stdout
    assert executions(fresh_table.url, line) == [] and executions(fresh_table.url, word) == []


def test_dry_run_trigger_only_says_what_it_would_start(tmp_path: Path) -> None:
    proc = run_cli(["--trigger-embeddings", "--export-dir", str(GOLDEN_EXPORT), *BUCKET_FLAGS], cwd=tmp_path)
    assert proc.returncode == 0, proc.describe()
    assert "Would start the line embedding workflow embedding-infra-prod-line-workflow" in proc.stdout
    assert "Would start the word embedding workflow embedding-infra-prod-word-workflow" in proc.stdout


# --- --status ----------------------------------------------------------------------------


def status(table: TableHandle, tmp_path: Path, *extra: str) -> dict[str, Any]:
    result = run_cli(
        ["--status", "--table", table.name, "--endpoint-url", table.url, "--region", REGION, *extra],
        report=tmp_path / "status.json",
    )
    assert result.returncode == 0 and result.report is not None, result.describe()
    report = result.report["status"]
    assert f"receipt lines waiting: {report['lines_none']:,}" in result.stdout
    assert f"receipt words waiting: {report['words_none']:,}" in result.stdout
    return report


def test_status_counts_none_records_and_falls_as_the_pipeline_works(
    ddblocal_table: TableHandle, tmp_path: Path
) -> None:
    assert status(ddblocal_table, tmp_path) == {"scope": "whole table", "lines_none": 0, "words_none": 0}
    copy_golden_into(ddblocal_table, tmp_path)
    whole = status(ddblocal_table, tmp_path)
    assert (whole["lines_none"], whole["words_none"]) == (LINES, WORDS)

    # The embedding pipeline marks three words and one line done.
    done = [i for i in load_expected().values() if i["TYPE"]["S"] == "RECEIPT_WORD"][:3]
    done += [i for i in load_expected().values() if i["TYPE"]["S"] == "RECEIPT_LINE"][:1]
    for item in done:
        ddblocal_table.client.update_item(
            TableName=ddblocal_table.name,
            Key={"PK": item["PK"], "SK": item["SK"]},
            UpdateExpression="SET embedding_status = :s, GSI1PK = :pk",
            ExpressionAttributeValues={":s": {"S": "SUCCESS"}, ":pk": {"S": "EMBEDDING_STATUS#SUCCESS"}},
        )
    after = status(ddblocal_table, tmp_path)
    assert (after["lines_none"], after["words_none"]) == (LINES - 1, WORDS - 3)


def test_status_restricted_to_the_export(ddblocal_table: TableHandle, tmp_path: Path) -> None:
    copy_golden_into(ddblocal_table, tmp_path)
    one = GOLDEN_IDS[0]
    export = tmp_path / "one"
    copy_golden(export, ids=[one])
    expected = [i["TYPE"]["S"] for i in load_expected([one]).values()]
    report = status(ddblocal_table, tmp_path, "--export-dir", str(export))
    assert report["scope"] == f"1 image of {export}"
    assert (report["lines_none"], report["words_none"]) == (
        expected.count("RECEIPT_LINE"),
        expected.count("RECEIPT_WORD"),
    )


# --- --verify ----------------------------------------------------------------------------


def verify_args(table: str, url: str, *extra: str, export_dir: Path = GOLDEN_EXPORT) -> list[str]:
    """--verify of the golden export (or ``export_dir``) against ``table`` at ``url``."""
    return [
        "--verify",
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


def verify(table: TableHandle, tmp_path: Path) -> Any:
    return run_cli(verify_args(table.name, table.url), report=tmp_path / "verify.json")


def test_verify_finds_a_deleted_item_and_a_changed_attribute(
    ddblocal_table: TableHandle, tmp_path: Path
) -> None:
    copy_golden_into(ddblocal_table, tmp_path)
    clean = verify(ddblocal_table, tmp_path)
    assert clean.returncode == 0, clean.describe()
    assert clean.report["verify"]["images_checked"] == len(GOLDEN_IDS)

    items = list(load_expected().values())
    deleted = next(i for i in items if i["TYPE"]["S"] == "LETTER")
    changed = next(i for i in items if i["TYPE"]["S"] == "RECEIPT_WORD_LABEL")
    progressed = next(i for i in items if i["TYPE"]["S"] == "RECEIPT_WORD")
    client, table = ddblocal_table.client, ddblocal_table.name
    client.delete_item(TableName=table, Key={"PK": deleted["PK"], "SK": deleted["SK"]})
    client.update_item(
        TableName=table,
        Key={"PK": changed["PK"], "SK": changed["SK"]},
        UpdateExpression="SET reasoning = :r",
        ExpressionAttributeValues={":r": {"S": "edited"}},
    )
    # Prod's own embedding progress is not a difference.
    client.update_item(
        TableName=table,
        Key={"PK": progressed["PK"], "SK": progressed["SK"]},
        UpdateExpression="SET embedding_status = :s, GSI1PK = :pk",
        ExpressionAttributeValues={":s": {"S": "SUCCESS"}, ":pk": {"S": "EMBEDDING_STATUS#SUCCESS"}},
    )

    found = verify(ddblocal_table, tmp_path)
    assert found.returncode == 1, found.describe()
    problems = {p["image_id"]: p for p in found.report["verify"]["problems"]}
    assert problems[deleted["PK"]["S"][6:]]["missing"] == [deleted["SK"]["S"]]
    assert {"SK": changed["SK"]["S"], "attributes": ["reasoning"]} in problems[changed["PK"]["S"][6:]][
        "different"
    ]
    reported = [d["SK"] for p in problems.values() for d in p["different"]] + [
        sk for p in problems.values() for sk in p["missing"]
    ]
    assert sorted(reported) == sorted([deleted["SK"]["S"], changed["SK"]["S"]])
    assert f"missing   {deleted['SK']['S']}" in found.stdout


def test_verify_counts_add_up_and_say_what_each_is(ddblocal_table: TableHandle, tmp_path: Path) -> None:
    """The bundled export (2 images, 1 without receipts) plus 2 files that cannot be read: those
    2 are never compared with prod, so they are not counted as checked, nor their errors as
    differences; the report says prod was read and counts the images the same way."""
    export = tmp_path / "export"
    shutil.copytree(DEV_EXPORT, export)
    result = run_cli(live_args(ddblocal_table.name, ddblocal_table.url, export), report=tmp_path / "c.json")
    assert result.returncode == 0, result.describe()
    (export / f"{fake_uuid(1)}.json").write_text("{truncated", encoding="utf-8")
    write_export(export, {"images": "not a list"}, f"{fake_uuid(2)}.json")
    client, table = ddblocal_table.client, ddblocal_table.name
    gone = next(v for _, v in sorted(table_items(client, table).items()) if v["TYPE"]["S"] == "RECEIPT_WORD")
    client.delete_item(TableName=table, Key={"PK": gone["PK"], "SK": gone["SK"]})

    found = run_cli(verify_args(table, ddblocal_table.url, export_dir=export), report=tmp_path / "v.json")
    assert found.returncode == 1, found.describe()
    lines = found.stdout.splitlines()
    assert lines[0] == (
        f"Verify: 5 images in {export}: 2 checked against {table} (1 of them with missing or "
        "different items), 2 not checked (could not be read: listed below), 1 skipped (no receipts)")
    bad_files = [f"{fake_uuid(n)}.json" for n in (1, 2)]
    listed = lines[lines.index("Not checked (could not be read):") + 1:][:2]
    assert [line.strip().split(":")[0] for line in listed] == bad_files, found.stdout
    report = found.report
    assert report is not None and report["prod_checked"] is True
    assert report["images"] == {"total": 5, "checked": 2, "not_checked": 2, "skipped_empty": 1}
    counts = {k: v for k, v in report["verify"].items() if k.startswith("images_")}
    assert counts == {"images_checked": 2, "images_with_problems": 1, "images_not_checked": 2,
                      "images_skipped_empty": 1}
    assert [p["missing"] for p in report["verify"]["problems"]] == [[gone["SK"]["S"]]]
    assert [r["file"] for r in report["verify"]["not_checked"]] == bad_files


def test_status_report_says_prod_was_read(ddblocal_table: TableHandle, tmp_path: Path) -> None:
    """--status reads prod: prod_checked is true; its images are the export's it counted, and
    none (null) for the whole table, whose images it does not count."""
    base = ["--status", "--table", ddblocal_table.name, "--endpoint-url", ddblocal_table.url, "--no-progress"]
    for extra, images in (([], None), (["--export-dir", str(GOLDEN_EXPORT)], {"total": len(GOLDEN_IDS)})):
        result = run_cli([*base, *extra], report=tmp_path / "status.json")
        assert result.returncode == 0, result.describe()
        assert result.report is not None and result.report["prod_checked"] is True
        assert result.report["images"] == images


def test_status_names_an_id_the_source_does_not_hold(ddblocal_table: TableHandle, tmp_path: Path) -> None:
    """An id never copied would read as "0 waiting", i.e. done: it is named, and the run fails."""
    unknown = fake_uuid(7)
    result = run_cli(["--status", "--table", ddblocal_table.name, "--endpoint-url", ddblocal_table.url,
                      "--export-dir", str(GOLDEN_EXPORT), "--image-id", GOLDEN_IDS[0], "--image-id", unknown,
                      "--no-progress"], report=tmp_path / "status.json")
    assert result.returncode == 1, result.describe()
    assert f"ERROR {unknown}: not in the export {GOLDEN_EXPORT}" in result.stderr, result.stderr
    assert result.report is not None
    assert result.report["status"]["not_found"] == [unknown]
    assert result.report["status"]["scope"] == f"1 image of {GOLDEN_EXPORT}; 1 not in it"


def test_verify_repair_command_reaches_every_image_it_checked(ddblocal_table: TableHandle,
                                                              tmp_path: Path) -> None:
    """--verify checks every image whatever --limit says; its repair command must not hold
    --limit, or it would repair only the first N of what was reported."""
    result = run_cli([*verify_args(ddblocal_table.name, ddblocal_table.url), "--limit", "1"])
    assert result.returncode == 1, result.describe()
    assert f"{len(GOLDEN_IDS)} checked against" in result.stdout, result.stdout
    repair = next(line for line in result.stdout.splitlines() if line.startswith("To write the missing"))
    assert "--limit" not in repair and "--no-dry-run" in repair, repair


def test_dry_run_trigger_after_a_failed_image_would_not_start_workflows(tmp_path: Path) -> None:
    """The live run starts no workflow after a failed image; the dry run says the same."""
    export = copy_golden(tmp_path / "export")[0].parent
    (export / f"{fake_uuid(3)}.json").write_text("{truncated", encoding="utf-8")
    proc = run_cli(["--trigger-embeddings", "--export-dir", str(export), *BUCKET_FLAGS, "--no-progress"])
    assert proc.returncode == 1, proc.describe()
    assert "Would not start embeddings: some images failed" in proc.stdout
    assert "Would start the" not in proc.stdout


def test_the_printed_repair_commands_run_as_printed_repair_the_table(
    ddblocal_table: TableHandle, tmp_path: Path
) -> None:
    """Each command --verify prints is run exactly as printed (bash, in the directory --verify
    ran in, confirmed on a terminal): the first writes what is missing and keeps prod's change,
    the second overwrites it; then --verify finds nothing."""
    copy_golden_into(ddblocal_table, tmp_path)
    client, table = ddblocal_table.client, ddblocal_table.name
    items = list(load_expected().values())
    deleted = next(i for i in items if i["TYPE"]["S"] == "RECEIPT_LINE")
    changed = next(i for i in items if i["TYPE"]["S"] == "RECEIPT_WORD")
    client.delete_item(TableName=table, Key={"PK": deleted["PK"], "SK": deleted["SK"]})
    client.put_item(TableName=table, Item={**changed, "text": {"S": "changed-in-prod"}})
    key = (changed["PK"]["S"], changed["SK"]["S"])

    for prefix in ("To write the missing items: ", "To overwrite prod's differing items with the export's: "):
        found = verify(ddblocal_table, tmp_path)
        assert found.returncode == 1, found.describe()
        line = next(x for x in found.stdout.splitlines() if x.startswith(prefix))[len(prefix):]
        code, _, output = run_on_pty([], "yes", shell_line=line)
        assert code == 0, output
        if prefix.startswith("To write"):
            assert table_items(client, table)[key]["text"] == {"S": "changed-in-prod"}  # prod's kept
    assert_table_equals(client, table, load_expected())
    clean = verify(ddblocal_table, tmp_path)
    assert clean.returncode == 0, clean.describe()


# --- --limit and --shard ---------------------------------------------------------------------


def test_limit_copies_slices_until_everything_is_there(ddblocal_table: TableHandle, tmp_path: Path) -> None:
    copied = []
    for _ in range(3):
        result = run_cli(
            live_args(ddblocal_table.name, ddblocal_table.url, GOLDEN_EXPORT, "--limit", "2"),
            report=tmp_path / "limit.json",
        )
        assert result.returncode == 0 and result.report is not None, result.describe()
        copied.append(result.report["images"]["copied"])
    assert copied == [2, 2, 1]
    assert_table_equals(ddblocal_table.client, ddblocal_table.name, load_expected())


SHARDS = 3


def crc_shard(image_id: str, shards: int) -> int:
    """The documented rule, computed here on its own: CRC-32 of the lower-cased image id mod N."""
    return zlib.crc32(image_id.lower().encode("utf-8")) % shards


@pytest.fixture(scope="module")
def shard_export(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[Key, Item]]:
    """The golden export three times over (15 images), so that every shard of 3 gets images."""
    export_dir = tmp_path_factory.mktemp("shards") / "export"
    expected = multiplied_export(export_dir, 3)
    for k in range(SHARDS):
        assert any(crc_shard(image_of(key), SHARDS) == k for key in expected), f"shard {k} would be empty"
    return export_dir, expected


def shard_items(expected: dict[Key, Item], k: int) -> dict[Key, Item]:
    return {key: item for key, item in expected.items() if crc_shard(image_of(key), SHARDS) == k}


def test_each_shard_plans_exactly_its_images(shard_export: tuple[Path, dict[Key, Item]],
                                             tmp_path: Path) -> None:
    """Dry run of each shard with --dump-items: exactly the items of the images the CRC-32 rule
    gives that shard; together the shards are exactly the export, no image in two of them."""
    export_dir, expected = shard_export
    together: dict[Key, Item] = {}
    for k in range(SHARDS):
        dump = tmp_path / f"shard{k}.jsonl"
        args = ["--export-dir", str(export_dir), *BUCKET_FLAGS, "--no-progress", "--shard", f"{k}/{SHARDS}",
                "--dump-items", str(dump)]
        result = run_cli(args, env=env_for_subprocess(credentials=False))
        assert result.returncode == 0, result.describe()
        planned = by_key(read_jsonl(dump))
        assert_items_equal(planned, shard_items(expected, k))
        assert not set(planned) & set(together), f"shard {k} repeats items of another shard"
        together.update(planned)
    assert_items_equal(together, expected)


def test_each_shard_copies_exactly_its_images(shard_export: tuple[Path, dict[Key, Item]], tmp_path: Path,
                                              ddblocal_server: DDBLocalServer,
                                              table_factory: Any) -> None:
    """Each shard copied into a fresh table holds exactly its own images' items."""
    export_dir, expected = shard_export
    for k in range(SHARDS):
        table = table_factory(ddblocal_server)
        result = run_cli(live_args(table.name, table.url, export_dir, "--shard", f"{k}/{SHARDS}"),
                         report=tmp_path / f"shard{k}.json")
        assert result.returncode == 0, result.describe()
        wanted = shard_items(expected, k)
        assert_table_equals(table.client, table.name, wanted)
        assert result.report is not None
        assert result.report["images"]["copied"] == len({image_of(key) for key in wanted})


def test_shard_assignment_is_stable_across_processes(tmp_path: Path) -> None:
    """The same ids land in the same shard whatever the interpreter's hash seed."""

    def shard_members(seed: str) -> list[str]:
        dump = tmp_path / f"dump-{seed}.jsonl"
        env = env_for_subprocess(extra={"PYTHONHASHSEED": seed})
        result = run_cli(["--export-dir", str(GOLDEN_EXPORT), "--shard", "1/2", "--dump-items", str(dump),
                          *BUCKET_FLAGS], env=env)
        assert result.returncode == 0, result.describe()
        return sorted({item["PK"]["S"] for item in read_jsonl(dump)})

    assert shard_members("1") == shard_members("12345")


def test_bad_shard_is_a_usage_error(tmp_path: Path) -> None:
    for bad in ("3/3", "1", "a/b", "-1/2"):
        proc = run_cli(["--export-dir", str(GOLDEN_EXPORT), "--shard", bad])
        assert proc.returncode == 2, (bad, proc.stderr)
        assert "Traceback" not in proc.stderr


# --- --max-items-per-second ------------------------------------------------------------------


@pytest.mark.parametrize("rate", [150.0])
def test_rate_cap_holds(ddblocal_table: TableHandle, tmp_path: Path, rate: float) -> None:
    """756 golden items at 150 items/s need about 5 s however many workers there are."""
    start = time.monotonic()
    result = run_cli(
        live_args(
            ddblocal_table.name,
            ddblocal_table.url,
            GOLDEN_EXPORT,
            "--max-items-per-second",
            str(rate),
            "--max-workers",
            "10",
        ),
        report=tmp_path / "rate.json",
        timeout=120,
    )
    elapsed = time.monotonic() - start
    assert result.returncode == 0 and result.report is not None, result.describe()
    written = result.report["items"]["written"]
    assert written == len(load_expected())
    # The bucket starts empty and holds at most one second's worth (or one batch).
    assert elapsed >= (written - rate) / rate * 0.95, f"{written} items in {elapsed:.1f}s"
    assert written / elapsed <= rate * 1.1


# --- failures of the operations themselves ----------------------------------------------------


def test_failed_trigger_is_reported_and_the_report_still_written(
    fresh_table: TableHandle, tmp_path: Path
) -> None:
    missing = "arn:aws:states:us-east-1:123456789012:stateMachine:does-not-exist"
    result = run_cli(
        live_args(
            fresh_table.name,
            fresh_table.url,
            GOLDEN_EXPORT,
            "--trigger-embeddings",
            "--line-state-machine",
            missing,
            "--word-state-machine",
            missing,
        ),
        report=tmp_path / "r.json",
    )
    assert result.returncode == 1, result.describe()
    assert "Traceback" not in result.stderr
    assert "--trigger-embeddings failed" in result.stderr
    assert result.report is not None and result.report["images"]["copied"] == len(GOLDEN_IDS)
    assert result.report["operation_errors"][0]["operation"] == "trigger-embeddings"


def test_verify_of_a_missing_table_fails_cleanly(ddblocal_server: DDBLocalServer, tmp_path: Path) -> None:
    """The table check before any work: one line, exit 2 (a configuration error)."""
    result = run_cli(verify_args("no-such-table-prod", ddblocal_server.url), report=tmp_path / "r.json")
    assert result.returncode == 2, result.describe()
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        f"error: table 'no-such-table-prod' (given as --table) not found at {ddblocal_server.url}"]


def test_trigger_with_verify_is_a_usage_error(ddblocal_server: DDBLocalServer) -> None:
    result = run_cli(verify_args("t-prod", ddblocal_server.url, "--trigger-embeddings"))
    assert result.returncode == 2, result.describe()


def test_verify_leaves_an_earlier_dump_alone(ddblocal_table: TableHandle, tmp_path: Path) -> None:
    dump = tmp_path / "written.jsonl"
    copy_golden_into(ddblocal_table, tmp_path, "--dump-items", str(dump))
    before = dump.read_bytes()
    assert before
    result = run_cli(verify_args(ddblocal_table.name, ddblocal_table.url, "--dump-items", str(dump)))
    assert result.returncode == 0, result.describe()
    assert dump.read_bytes() == before


def test_missing_credentials_is_a_configuration_error(ddblocal_table: TableHandle, tmp_path: Path) -> None:
    env = {k: v for k, v in env_for_subprocess().items() if not k.startswith("AWS_ACCESS_KEY_ID")}
    env.pop("AWS_SECRET_ACCESS_KEY", None)
    env["HOME"] = str(tmp_path)
    for extra in ([], ["--no-skip-existing"]):
        result = run_cli(live_args(ddblocal_table.name, ddblocal_table.url, GOLDEN_EXPORT, *extra), env=env)
        assert result.returncode == 2, result.describe()
        assert "credentials" in result.stderr.lower()
        assert "Traceback" not in result.stderr
    assert table_items(ddblocal_table.client, ddblocal_table.name) == {}
