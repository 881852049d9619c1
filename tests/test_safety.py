"""Safety of live runs: refusing dev tables, demanding confirmation, never leaking credentials."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from cli import BUCKET_FLAGS, CliResult, live_args, run_cli, run_on_pty
from conftest import TableHandle
from fault_proxy import DEFAULT_FAULTS, THROTTLING, FaultProxy
from items import GOLDEN_EXPORT, GOLDEN_IDS, assert_table_equals, load_expected, table_items
from servers import REGION, DDBLocalServer, env_for_subprocess, free_port

EXPECTED = load_expected()


def without_yes(args: list[str]) -> list[str]:
    return [a for a in args if a != "--yes"]


# --------------------------------------------------------------------------- dev tables


@pytest.mark.parametrize("via", ["flag", "env"])
def test_refuses_the_configured_dev_table(ddblocal_table: TableHandle, tmp_path: Path, via: str) -> None:
    proxy = FaultProxy(ddblocal_table.url, rate=0.0)
    env = env_for_subprocess()
    args = live_args(ddblocal_table.name, proxy.url)
    if via == "flag":
        args += ["--dev-table", ddblocal_table.name]
    else:
        env["DEV_DYNAMODB_TABLE_NAME"] = ddblocal_table.name
    try:
        result = run_cli(args, env=env, report=tmp_path / "r.json")
    finally:
        proxy.stop()
    assert result.returncode == 2, result.describe()
    assert "dev" in result.stderr.lower()
    assert proxy.calls == {}, f"a refused run contacted the endpoint: {proxy.calls}"
    assert table_items(ddblocal_table.client, ddblocal_table.name) == {}


def test_force_allows_the_configured_dev_table(ddblocal_table: TableHandle) -> None:
    result = run_cli(live_args(ddblocal_table.name, ddblocal_table.url, GOLDEN_EXPORT,
                               "--dev-table", ddblocal_table.name, "--force"))
    assert result.returncode == 0, result.describe()
    assert_table_equals(ddblocal_table.client, ddblocal_table.name, EXPECTED)


@pytest.mark.parametrize("name", ["ReceiptsTable-dev-abc123", "receipts-dev", "dev-receipts",
                                  "ReceiptsTable-DEV-1a2b", "receipts_dev_table",
                                  "ReceiptsTable-development"])
def test_refuses_a_dev_looking_table_name(ddblocal_server: DDBLocalServer, tmp_path: Path, name: str) -> None:
    proxy = FaultProxy(ddblocal_server.url, rate=0.0)
    try:
        result = run_cli(live_args(name, proxy.url), report=tmp_path / "r.json")
    finally:
        proxy.stop()
    assert result.returncode == 2, result.describe()
    assert name in result.stderr and "--force" in result.stderr
    assert proxy.calls == {}, f"a refused run contacted the endpoint: {proxy.calls}"


def test_force_passes_the_dev_name_check(ddblocal_server: DDBLocalServer, tmp_path: Path) -> None:
    """With --force the run goes on to the table (which does not exist here: the tests never
    create a table named like a dev table, so the run stops at the table check: exit 2, one line
    saying the table was not found, and not a refusal)."""
    proxy = FaultProxy(ddblocal_server.url, rate=0.0)
    try:
        result = run_cli(live_args("ReceiptsTable-dev-abc123", proxy.url, GOLDEN_EXPORT, "--force",
                                   "--max-retries", "0"))
    finally:
        proxy.stop()
    assert result.returncode == 2, result.describe()
    assert "refusing" not in result.stderr
    assert "not found" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert proxy.calls == {"DescribeTable": 1}, "with --force the table should have been checked"
    assert "BatchWriteItem" not in proxy.calls


# --------------------------------------------------------------------------- confirmation


@pytest.mark.parametrize("stdin_text", [None, "yes\n"], ids=["devnull", "piped-yes"])
def test_live_run_without_yes_and_without_terminal_refuses(
    ddblocal_table: TableHandle, stdin_text: str | None
) -> None:
    proxy = FaultProxy(ddblocal_table.url, rate=0.0)
    try:
        result = run_cli(without_yes(live_args(ddblocal_table.name, proxy.url)), input=stdin_text)
    finally:
        proxy.stop()
    assert result.returncode == 2, result.describe()
    assert "--yes" in result.stderr
    assert "BatchWriteItem" not in proxy.calls
    assert table_items(ddblocal_table.client, ddblocal_table.name) == {}


def check_prompt_details(before: str, table: str, url: str) -> None:
    assert table in before
    assert REGION in before
    assert url in before
    n_images, n_items = len(GOLDEN_IDS), len(EXPECTED)
    assert re.search(rf"\b{n_images}\s+images?\b", before), before
    assert re.search(rf"\b{n_items:,}\s+items?\b|\b{n_items}\s+items?\b", before), before


def test_terminal_prompt_answered_no_writes_nothing(ddblocal_table: TableHandle) -> None:
    proxy = FaultProxy(ddblocal_table.url, rate=0.0)
    try:
        code, before, whole = run_on_pty(without_yes(live_args(ddblocal_table.name, proxy.url)), "no")
    finally:
        proxy.stop()
    check_prompt_details(before, ddblocal_table.name, proxy.url)
    assert code != 0, whole
    assert "BatchWriteItem" not in proxy.calls
    assert table_items(ddblocal_table.client, ddblocal_table.name) == {}


def test_ctrl_c_at_the_prompt_says_nothing_was_written(ddblocal_table: TableHandle, tmp_path: Path) -> None:
    proxy = FaultProxy(ddblocal_table.url, rate=0.0)
    args = [*without_yes(live_args(ddblocal_table.name, proxy.url)), "--report", str(tmp_path / "r.json")]
    try:
        code, _, whole = run_on_pty(args, None)
    finally:
        proxy.stop()
    assert code == 130, whole
    assert "stopped at the confirmation prompt: nothing was written" in whole, whole
    assert "not finished" not in whole and "re-run" not in whole, whole
    assert "Traceback" not in whole and "BatchWriteItem" not in proxy.calls
    assert table_items(ddblocal_table.client, ddblocal_table.name) == {}


def test_terminal_prompt_answered_yes_copies(ddblocal_table: TableHandle) -> None:
    code, before, whole = run_on_pty(without_yes(live_args(ddblocal_table.name, ddblocal_table.url)), "yes")
    check_prompt_details(before, ddblocal_table.name, ddblocal_table.url)
    assert code == 0, whole
    assert_table_equals(ddblocal_table.client, ddblocal_table.name, EXPECTED)


def test_region_from_the_environment_is_shown_and_reported(ddblocal_table: TableHandle,
                                                           tmp_path: Path) -> None:
    """No --region: the prompt, the header and the reports name the region the client uses (here
    AWS_DEFAULT_REGION's) and where it came from, not "(default)" or null."""
    region, where = "eu-west-3", "from environment AWS_DEFAULT_REGION"
    env = env_for_subprocess(extra={"AWS_DEFAULT_REGION": region, "AWS_REGION": region})
    args = live_args(ddblocal_table.name, ddblocal_table.url)
    at = args.index("--region")
    args = args[:at] + args[at + 2:]

    code, before, whole = run_on_pty(without_yes(args), "no", env=env)
    assert code != 0, whole
    assert (f"About to copy into table {ddblocal_table.name!r}, region {region} ({where}), "
            f"endpoint {ddblocal_table.url}:") in before, before
    assert table_items(ddblocal_table.client, ddblocal_table.name) == {}

    copied = run_cli(args, env=env, report=tmp_path / "copy.json")
    assert copied.returncode == 0, copied.describe()
    assert (f"Prod table: {ddblocal_table.name} at {ddblocal_table.url} (given as --table), "
            f"region {region} ({where})") in copied.stdout.splitlines()
    verified = run_cli(["--verify", *[a for a in args if a not in ("--no-dry-run", "--yes")]], env=env,
                       report=tmp_path / "verify.json")
    assert verified.returncode == 0, verified.describe()
    assert copied.report is not None and verified.report is not None
    assert copied.report["region"] == verified.report["region"] == region


# --------------------------------------------------------------------------- credentials

FAKE_KEY_ID = "AKIAFAKEKEYQZX7ZZ9WQ"
FAKE_SECRET = "fAkeSecretQzx7/Zz9wqPlumBob+Not4Real00000"
FAKE_TOKEN = "FakeSessionTokenQzx7Zz9wqIQoJb3JpZ2luX2VjEJ///////////wEaCXVzLWVhc3QtMSJHMEUCIQ=="
FORBIDDEN = (FAKE_KEY_ID, FAKE_SECRET, FAKE_TOKEN, FAKE_SECRET[:16], FAKE_TOKEN[:24], "Qzx7")
FORBIDDEN_CI = ("authorization", "x-amz-security-token", "signature=", "credential=")


def credential_env() -> dict[str, str]:
    env = env_for_subprocess()
    env.update(AWS_ACCESS_KEY_ID=FAKE_KEY_ID, AWS_SECRET_ACCESS_KEY=FAKE_SECRET, AWS_SESSION_TOKEN=FAKE_TOKEN)
    return env


def assert_no_secrets(*texts: str) -> None:
    for text in texts:
        for s in FORBIDDEN:
            assert s not in text, f"credential material {s[:6]}... appears in the output"
        for s in FORBIDDEN_CI:
            assert s not in text.lower(), f"{s!r} appears in the output"


def leak_check_run(args: list[str], tmp_path: Path) -> CliResult:
    report = tmp_path / "leak.json"
    result = run_cli([*args, "--verbose"], env=credential_env(), report=report)
    report_text = report.read_text(encoding="utf-8") if report.exists() else ""
    assert_no_secrets(result.stdout, result.stderr, report_text)
    return result


def test_no_credentials_in_output_of_a_successful_run(ddblocal_table: TableHandle, tmp_path: Path) -> None:
    dump = tmp_path / "items.jsonl"
    result = leak_check_run(live_args(ddblocal_table.name, ddblocal_table.url, GOLDEN_EXPORT,
                                      "--dump-items", str(dump)), tmp_path)
    assert result.returncode == 0, result.describe()
    assert_no_secrets(dump.read_text(encoding="utf-8"))
    assert_table_equals(ddblocal_table.client, ddblocal_table.name, EXPECTED)


@pytest.mark.parametrize("targets", [("BatchWriteItem",), None], ids=["writes-fail", "all-fail"])
def test_no_credentials_in_output_when_requests_fail(
    ddblocal_table: TableHandle, tmp_path: Path, targets: tuple[str, ...] | None
) -> None:
    proxy = FaultProxy(ddblocal_table.url, seed=3, rate=1.0, faults=DEFAULT_FAULTS, targets=targets)
    try:
        args = live_args(ddblocal_table.name, proxy.url, GOLDEN_EXPORT, "--max-retries", "1")
        result = leak_check_run(args, tmp_path)
    finally:
        proxy.stop()
    # With every call failing, the table check before the copy stops the run (exit 2).
    assert result.returncode == (1 if targets else 2), result.describe()
    assert proxy.total_injected() > 0


def test_no_credentials_in_output_when_endpoint_is_unreachable(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = leak_check_run(live_args("receipts-unreachable", url, GOLDEN_EXPORT, "--max-retries", "0"),
                            tmp_path)
    assert result.returncode == 2, result.describe()  # the table check before the copy


def test_no_credentials_in_dry_run_or_usage_errors(ddblocal_table: TableHandle, tmp_path: Path) -> None:
    args = live_args(ddblocal_table.name, ddblocal_table.url)
    dry = [a for a in args if a not in ("--no-dry-run", "--yes")]
    result = leak_check_run(dry, tmp_path)
    assert result.returncode == 0, result.describe()
    bad = run_cli(["--no-dry-run", "--yes", "--table", "x", "--export-dir", str(GOLDEN_EXPORT), *BUCKET_FLAGS,
                   "--max-retries", "-1", "--verbose"], env=credential_env())
    assert bad.returncode == 2
    assert_no_secrets(bad.stdout, bad.stderr)


def test_throttled_run_with_verbose_logs_retries_without_secrets(
    ddblocal_table: TableHandle, tmp_path: Path
) -> None:
    proxy = FaultProxy(ddblocal_table.url, seed=5, rate=0.5, faults=(THROTTLING,),
                           targets=("BatchWriteItem",))
    try:
        args = live_args(ddblocal_table.name, proxy.url, GOLDEN_EXPORT, "--max-retries", "10")
        result = leak_check_run(args, tmp_path)
    finally:
        proxy.stop()
    assert result.returncode == 0, result.describe()
    assert_table_equals(ddblocal_table.client, ddblocal_table.name, EXPECTED)
