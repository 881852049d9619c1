"""The operations after a copy: --trigger-embeddings, --status and --verify (its report, its
repair commands, Ctrl-C during it), and how each fails, each run as the CLI: on DynamoDB Local,
except --trigger-embeddings, which needs Step Functions and so runs on moto (DynamoDB and Step
Functions on one endpoint). The copy's own --limit, --shard and rate cap: test_limit_shard_rate.py."""

from __future__ import annotations

import json
import shlex
import shutil
import signal
import subprocess
import uuid
from pathlib import Path
from typing import Any

from cli import BUCKET_FLAGS, TOOL, CliResult, kill_if_running, live_args, run_cli, run_on_pty, tool_command
from conftest import TableHandle
from exports import copy_golden, fake_uuid, write_export
from fault_proxy import THROTTLING, FaultProxy
from items import (
    DEV_EXPORT,
    GOLDEN_EXPORT,
    GOLDEN_IDS,
    assert_table_equals,
    change_a_receipt_word,
    load_expected,
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
from waiting import wait_for

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
    assert "Would start the embedding workflow embedding-infra-prod-line-workflow" in proc.stdout
    assert "Would start the embedding workflow embedding-infra-prod-word-workflow" in proc.stdout


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


def test_verify_prints_the_commands_that_repair(fresh_table: TableHandle, tmp_path: Path) -> None:
    result = run_cli(live_args(fresh_table.name, fresh_table.url, GOLDEN_EXPORT), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    expected = load_expected()
    original, _ = change_a_receipt_word(fresh_table.client, fresh_table.name)
    gone = next(k for k, v in sorted(expected.items()) if v["TYPE"]["S"] == "RECEIPT_LINE")
    fresh_table.client.delete_item(TableName=fresh_table.name,
                                   Key={"PK": {"S": gone[0]}, "SK": {"S": gone[1]}})
    verify = ["--verify", "--table", fresh_table.name, "--endpoint-url", fresh_table.url,
              "--export-dir", str(GOLDEN_EXPORT), "--dev-raw-bucket", "dev-raw-bucket", "--prod-raw-bucket",
              "prod-raw-bucket", "--dev-cdn-bucket", "dev-cdn-bucket", "--prod-cdn-bucket", "prod-cdn-bucket"]

    def repair(prefix: str) -> None:
        proc = run_cli(verify, cwd=tmp_path)
        assert proc.returncode == 1, proc.stderr
        line = next(x for x in proc.stdout.splitlines() if x.startswith(prefix))
        command = shlex.split(line[len(prefix):])
        assert command[1] == str(TOOL) or Path(command[1]).resolve() == TOOL
        fixed = subprocess.run([*command, "--yes"], cwd=tmp_path, env=env_for_subprocess(),
                               capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
                               check=False)
        assert fixed.returncode == 0, fixed.stderr

    repair("To write the missing items: ")
    items = table_items(fresh_table.client, fresh_table.name)
    assert items[gone] == expected[gone]
    assert items[(original["PK"]["S"], original["SK"]["S"])] != original  # prod's change kept
    repair("To overwrite prod's differing items with the export's: ")
    assert table_items(fresh_table.client, fresh_table.name) == expected
    assert run_cli(verify, cwd=tmp_path).returncode == 0


def test_ctrl_c_during_verify_says_the_verify_was_interrupted(fresh_table: TableHandle,
                                                              tmp_path: Path) -> None:
    """SIGINT once verify reads prod (every read throttled, retried far longer than any test
    runs, so it is provably still verifying): exit 130, the verify named as interrupted with
    how many images it checked, no word of a copy to finish."""
    proxy = FaultProxy(fresh_table.url, rate=1.0, faults=[THROTTLING], targets=["BatchGetItem"])
    args = ["--verify", "--table", fresh_table.name, "--endpoint-url", proxy.url, "--export-dir",
            str(GOLDEN_EXPORT), *BUCKET_FLAGS, "--max-retries", "1000", "--report", str(tmp_path / "r.json")]
    proc = subprocess.Popen(tool_command(args), env=env_for_subprocess(), cwd=tmp_path,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        wait_for(lambda: proxy.calls.get("BatchGetItem"), timeout=120, interval=0.02,
                 what="--verify's first read of prod (BatchGetItem through the proxy)",
                 give_up=lambda: None if proc.poll() is None else f"the tool exited {proc.returncode}",
                 details=lambda: "" if proc.poll() is None else "\n".join(proc.communicate()))
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        proxy.stop()
        kill_if_running(proc)
    assert proc.returncode == 130, out + err
    assert f"verify interrupted: 0 of {len(GOLDEN_IDS)} images checked" in err, err
    assert "not finished" not in out + err and "re-run the same command" not in out + err, out + err
    assert "Traceback" not in err
    report = json.loads((tmp_path / "r.json").read_text(encoding="utf-8"))
    assert report["verify"] == {"images_checked": 0, "interrupted": True} and report["interrupted"]


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
