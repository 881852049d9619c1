"""Configuration and what a run checks before it starts: each operation asks only for what it
uses and says where a value came from (flags, config files, pulumi stacks, environment), config
files and stacks that lack a key, missing runtime packages, the table check before the work,
abbreviated flags refused, and --help.

Every test runs the CLI as a subprocess; those that need a table use a moto server on 127.0.0.1.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path
from typing import Any

import pytest
from cli import TOOL, CliResult, Terminal, live_args, run_cli, tool_command
from conftest import TableHandle
from fault_proxy import THROTTLING, FaultProxy
from items import DEV_EXPORT, GOLDEN_EXPORT, load_expected, read_jsonl, table_items
from servers import create_pass_machines, env_for_subprocess, free_port, make_client

BUCKET_ARGS = ["--dev-raw-bucket", "dev-raw-bucket", "--prod-raw-bucket", "prod-raw-bucket",
               "--dev-cdn-bucket", "dev-cdn-bucket", "--prod-cdn-bucket", "prod-cdn-bucket"]
BUCKETS = {"raw_bucket_name": "{stage}-raw-bucket", "cdn_bucket_name": "{stage}-cdn-bucket"}


def run(args: list[Any], cwd: Path, *, env: dict[str, str] | None = None,
        python: list[str] | None = None) -> CliResult:
    """The CLI in ``cwd`` with dummy credentials and no terminal."""
    return run_cli(args, cwd=cwd, env=env, python=python)


def stack_outputs(stage: str, table: str | None, *, drop: tuple[str, ...] = ()) -> dict[str, Any]:
    """What `pulumi stack output --json` prints for a stage (with unrelated outputs, as real
    stacks have), optionally without some keys."""
    data: dict[str, Any] = {"api_url": "https://example.invalid", "replicas": 3}
    if table:
        data["dynamodb_table_name"] = table
    data.update({k: v.format(stage=stage) for k, v in BUCKETS.items()})
    return {k: v for k, v in data.items() if k not in drop}


def write_config(path: Path, data: dict[str, Any]) -> Path:
    """Writes the file; returns its name, as the user types it in the directory the CLI runs in."""
    path.write_text(json.dumps(data), encoding="utf-8")
    return Path(path.name)


def one_error_line(proc: CliResult | subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    return lines[0]


# --- 1. each operation asks only for what it uses; messages name where a value came from ---------


def test_status_with_prod_config_needs_no_dev_buckets(fresh_table: TableHandle, tmp_path: Path) -> None:
    """README step 3: prod.json names prod's buckets, dev's are not given; --status uses neither."""
    prod = write_config(tmp_path / "prod.json", stack_outputs("prod", fresh_table.name))
    for extra in ([], ["--export-dir", str(DEV_EXPORT)]):
        proc = run(["--status", "--prod-config", prod, "--endpoint-url", fresh_table.url, *extra], tmp_path)
        assert proc.returncode == 0, proc.stderr
        assert "receipt lines waiting: 0" in proc.stdout


def test_trigger_embeddings_with_prod_config_needs_no_dev_buckets(fresh_table: TableHandle,
                                                                  tmp_path: Path) -> None:
    create_pass_machines(fresh_table.url)
    prod = write_config(tmp_path / "prod.json", stack_outputs("prod", fresh_table.name))
    proc = run(["--trigger-embeddings", "--no-dry-run", "--yes", "--prod-config", prod,
                "--endpoint-url", fresh_table.url], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "embedding workflow" in proc.stdout


@pytest.mark.parametrize("where", ["file", "environment", "flag"])
def test_half_a_bucket_pair_names_where_the_half_came_from(tmp_path: Path, where: str) -> None:
    env = env_for_subprocess()
    args: list[Any] = ["--export-dir", GOLDEN_EXPORT]
    if where == "file":
        args += ["--dev-config", write_config(tmp_path / "dev.json", stack_outputs("dev", None))]
        source = "from dev.json: raw_bucket_name"
    elif where == "environment":
        env.update(DEV_RAW_BUCKET="dev-raw-bucket", DEV_CDN_BUCKET="dev-cdn-bucket")
        source = "from environment DEV_RAW_BUCKET"
    else:
        args += ["--dev-raw-bucket", "dev-raw-bucket", "--dev-cdn-bucket", "dev-cdn-bucket"]
        source = "given as --dev-raw-bucket"
    proc = run(args, tmp_path, env=env)
    assert proc.returncode == 2
    line = one_error_line(proc)
    assert f"--dev-raw-bucket is set ({source}) but --prod-raw-bucket is not" in line, line


def test_verify_without_bucket_names_is_refused_up_front(tmp_path: Path) -> None:
    """--verify builds the items prod should hold: without the renames a correct copy would
    show every IMAGE and RECEIPT item as different, and the printed repair command would
    itself refuse to run. Refused before anything is contacted (nothing listens at the URL)."""
    for buckets in ([], BUCKET_ARGS[:4]):
        proc = run(["--verify", "--table", "receipts-prod", "--endpoint-url",
                    f"http://127.0.0.1:{free_port()}", "--export-dir", GOLDEN_EXPORT, *buckets], tmp_path)
        assert proc.returncode == 2, proc.describe()
        line = one_error_line(proc)
        kind = "cdn" if buckets else "raw"
        assert line == (f"error: {kind} bucket names not configured, which --verify needs to compare "
                        f"prod's items with the export's: give --dev-{kind}-bucket/--prod-{kind}-bucket "
                        "or --dev-config/--prod-config"), line


def test_header_says_where_the_table_came_from(fresh_table: TableHandle, tmp_path: Path) -> None:
    prod = write_config(tmp_path / "prod.json", stack_outputs("prod", fresh_table.name))
    dev = write_config(tmp_path / "dev.json", stack_outputs("dev", "ReceiptsTable-dev-1"))
    proc = run(["--export-dir", GOLDEN_EXPORT, "--dev-config", dev, "--prod-config", prod,
                "--endpoint-url", fresh_table.url, "--no-progress"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert f"Prod table: {fresh_table.name} at {fresh_table.url} (from prod.json: dynamodb_table_name)" \
        in proc.stdout


# --- 6. a config file that lacks a key the run needs ---------------------------------------------


@pytest.mark.parametrize("operation", [["--status"], ["--verify"], ["--no-dry-run", "--yes"]])
def test_config_without_table_key_is_named(tmp_path: Path, operation: list[str]) -> None:
    prod = write_config(tmp_path / "prod.json", stack_outputs("prod", None))
    dev = write_config(tmp_path / "dev.json", stack_outputs("dev", "ReceiptsTable-dev-1"))
    proc = run([*operation, "--export-dir", GOLDEN_EXPORT, "--dev-config", dev, "--prod-config", prod],
               tmp_path)
    assert proc.returncode == 2
    assert "prod.json has no 'dynamodb_table_name'" in one_error_line(proc)


def test_dry_run_with_config_without_table_key_names_it(tmp_path: Path) -> None:
    prod = write_config(tmp_path / "prod.json", stack_outputs("prod", None))
    dev = write_config(tmp_path / "dev.json", stack_outputs("dev", "ReceiptsTable-dev-1"))
    proc = run(["--export-dir", GOLDEN_EXPORT, "--dev-config", dev, "--prod-config", prod, "--no-progress"],
               tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "prod.json has no 'dynamodb_table_name'" in proc.stderr
    assert "Prod table: not checked (prod.json has no 'dynamodb_table_name')" in proc.stdout


@pytest.mark.parametrize("value,shown", [(123, "123"), (None, "null"), ("", '""'), ({"a": 1}, '{"a": 1}')])
def test_config_value_that_is_not_a_name_is_named_as_such(tmp_path: Path, value: Any, shown: str) -> None:
    """Present but not a name is its own error, not "has no ..." (the key is there)."""
    prod = write_config(tmp_path / "prod.json", {**stack_outputs("prod", "t"), "dynamodb_table_name": value})
    proc = run(["--status", "--prod-config", prod], tmp_path)
    assert proc.returncode == 2
    assert f"config file prod.json: 'dynamodb_table_name' is {shown}, not a name" in one_error_line(proc)


def test_config_without_bucket_key_is_named(tmp_path: Path) -> None:
    prod = write_config(tmp_path / "prod.json", stack_outputs("prod", "receipts-prod",
                                                              drop=("cdn_bucket_name",)))
    dev = write_config(tmp_path / "dev.json", stack_outputs("dev", "ReceiptsTable-dev-1"))
    proc = run(["--export-dir", GOLDEN_EXPORT, "--dev-config", dev, "--prod-config", prod], tmp_path)
    assert proc.returncode == 2
    assert "prod.json has no 'cdn_bucket_name'" in one_error_line(proc)


def test_live_copy_with_dev_config_without_table_key_is_named(fresh_table: TableHandle,
                                                               tmp_path: Path) -> None:
    """The dev table name is what the live copy refuses to write into: it must be known."""
    prod = write_config(tmp_path / "prod.json", stack_outputs("prod", fresh_table.name))
    dev = write_config(tmp_path / "dev.json", stack_outputs("dev", None))
    proc = run(["--no-dry-run", "--yes", "--export-dir", GOLDEN_EXPORT, "--dev-config", dev,
                "--prod-config", prod, "--endpoint-url", fresh_table.url], tmp_path)
    assert proc.returncode == 2
    assert "dev.json has no 'dynamodb_table_name'" in one_error_line(proc)
    assert table_items(fresh_table.client, fresh_table.name) == {}


# --- 2. a missing runtime package: one line, exit 2 -------------------------------------------------


def test_missing_boto3_is_one_line(moto_server: Any, tmp_path: Path) -> None:
    """`python -S` has no site-packages: boto3 cannot be imported. A run that needs it says so."""
    proc = run(["--table", "receipts-prod", "--endpoint-url", moto_server.url, "--export-dir", GOLDEN_EXPORT,
                "--no-progress"], tmp_path, python=[sys.executable, "-S"])
    assert proc.returncode == 2
    line = one_error_line(proc)
    assert "boto3" in line and "not installed" in line, line


def test_dry_run_without_table_needs_no_package(tmp_path: Path) -> None:
    dump = tmp_path / "items.jsonl"
    proc = run(["--export-dir", GOLDEN_EXPORT, "--no-progress", "--dump-items", dump],
               tmp_path, python=[sys.executable, "-S"])
    assert proc.returncode == 0, proc.stderr
    # a warning (bucket names not configured) is logged without tqdm, not a logging traceback
    assert "WARNING raw bucket names not configured" in proc.stderr
    assert "Traceback" not in proc.stderr and "Logging error" not in proc.stderr
    assert len(read_jsonl(dump)) == len(load_expected())


def test_dry_run_without_table_on_a_terminal_needs_no_tqdm(tmp_path: Path) -> None:
    """On a terminal the bars need tqdm; the standard-library-only dry run goes without them."""
    command = tool_command(["--export-dir", GOLDEN_EXPORT, *BUCKET_ARGS], [sys.executable, "-S"])
    with Terminal(command, cwd=tmp_path, on_terminal=["stderr"]) as term:
        code = term.wait(120)
    assert code == 0
    assert "Images found:" in term.stdout


# --- 7. the table is checked once before the work -------------------------------------------------


def test_missing_table_is_one_line_in_a_dry_run(moto_server: Any, tmp_path: Path) -> None:
    buckets = ["--dev-raw-bucket", "a", "--prod-raw-bucket", "b", "--dev-cdn-bucket", "c",
               "--prod-cdn-bucket", "d"]
    proc = run(["--table", "no-such-table-prod", "--endpoint-url", moto_server.url,
                "--export-dir", DEV_EXPORT, "--no-progress", *buckets], tmp_path)
    assert proc.returncode == 2
    assert one_error_line(proc) == (f"error: table 'no-such-table-prod' (given as --table) not found at "
                                    f"{moto_server.url}")
    assert proc.stdout == ""


def test_unreachable_endpoint_is_one_line(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    proc = run(live_args("receipts-prod", url, DEV_EXPORT, "--max-retries", "2"), tmp_path)
    assert proc.returncode == 2
    line = one_error_line(proc)
    assert line.startswith(f"error: cannot reach DynamoDB at {url}: "), line
    assert "ERROR" not in proc.stdout


def test_table_with_other_keys_is_refused(moto_server: Any, tmp_path: Path) -> None:
    client = make_client(moto_server.url)
    name = f"other-shape-{uuid.uuid4().hex[:8]}"
    client.create_table(TableName=name, BillingMode="PAY_PER_REQUEST",
                        KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
                        AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}])
    proc = run(live_args(name, moto_server.url, GOLDEN_EXPORT), tmp_path)
    assert proc.returncode == 2
    assert "not the receipts table's PK (hash) and SK (range)" in one_error_line(proc)
    assert client.scan(TableName=name)["Count"] == 0


def test_throttled_describe_table_is_retried(fresh_table: TableHandle, tmp_path: Path) -> None:
    proxy = FaultProxy(fresh_table.url, rate=1.0, faults=[THROTTLING], targets=["DescribeTable"],
                       max_faults=3)
    try:
        proc = run(live_args(fresh_table.name, proxy.url, GOLDEN_EXPORT), tmp_path)
        calls = proxy.calls
    finally:
        proxy.stop()
    assert proc.returncode == 0, proc.stderr
    assert calls["DescribeTable"] == 4
    assert len(table_items(fresh_table.client, fresh_table.name)) == len(load_expected())


# --- abbreviated flags ---------------------------------------------------------------------------


@pytest.mark.parametrize("abbreviated", ["--verif", "--dry", "--no-dry", "--dev-conf"])
def test_abbreviated_flags_are_refused(tmp_path: Path, abbreviated: str) -> None:
    """argparse would take a prefix for the flag it starts; a tool that writes to prod must not
    guess (and --verify's repair command drops flags by their full names)."""
    given = [abbreviated, "dev.json"] if abbreviated == "--dev-conf" else [abbreviated]
    proc = run([*given, "--yes", "--export-dir", GOLDEN_EXPORT, *BUCKET_ARGS, "--table", "receipts-prod",
                "--endpoint-url", f"http://127.0.0.1:{free_port()}"], tmp_path)  # nothing listens
    assert proc.returncode == 2, proc.describe()
    assert proc.stderr.splitlines()[-1].endswith(f"error: unrecognized arguments: {' '.join(given)}"), \
        proc.stderr
    assert proc.stdout == ""


# --- 9. --help ----------------------------------------------------------------------------------


def test_help_has_examples_exit_codes_and_groups(tmp_path: Path) -> None:
    proc = run(["--help"], tmp_path, python=[sys.executable, "-S"])
    assert proc.returncode == 0
    text = proc.stdout
    assert "examples" in text and "exit codes:" in text and "143 stopped with SIGTERM" in text
    for code in ("0 ", "1 ", "2 ", "130 "):  # 143 (SIGTERM) is named on the 130 line
        assert f"\n  {code}" in text, code
    own = text[text.index("operations that run on their own"):]
    own = own[:own.index("\n\n")]
    assert "--status" in own and "--verify" in own and "--trigger-embeddings" not in own
    flat = " ".join(text.split())
    assert "alone it only triggers" in flat and "after a clean live copy" not in flat
    assert "nothing is contacted" in flat


def test_help_examples_parse(tmp_path: Path) -> None:
    """Each example of the epilog is a valid command line of this tool."""
    sys.path.insert(0, str(TOOL.parent))
    try:
        import copy_dynamodb_dev_to_prod as tool
    finally:
        sys.path.pop(0)
    lines = tool.HELP_EPILOG.replace("\\\n", " ").splitlines()
    examples = [line.split(None, 2)[2] for line in lines if line.startswith("  .venv/bin/python %(prog)s")]
    assert len(examples) >= 5
    for example in examples:
        tool.build_parser().parse_args(shlex.split(example))


# --- 12. --dev-stack / --prod-stack via pulumi -----------------------------------------------------


def fake_pulumi(bin_dir: Path, stacks: dict[str, dict[str, Any]], log: Path) -> None:
    """A stand-in `pulumi` on PATH: `pulumi stack output --json --stack NAME` prints the stack's
    outputs if NAME is one of ``stacks`` and the working directory holds Pulumi.yaml, else fails
    as pulumi does. Every call's argv and cwd are appended to ``log``."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    script = bin_dir / "pulumi"
    script.write_text(textwrap.dedent(f"""\
        #!{sys.executable}
        import json, os, sys
        stacks = {json.dumps(stacks)!r}
        with open({str(log)!r}, "a") as f:
            f.write(json.dumps({{"argv": sys.argv[1:], "cwd": os.getcwd()}}) + "\\n")
        if not os.path.exists("Pulumi.yaml"):
            sys.exit("error: no Pulumi.yaml project file found")
        args = sys.argv[1:]
        if args[:3] != ["stack", "output", "--json"] or len(args) != 5 or args[3] != "--stack":
            sys.exit("error: unexpected arguments " + " ".join(args))
        outputs = json.loads(stacks).get(args[4])
        if outputs is None:
            print("error: no stack named '" + args[4] + "' found", file=sys.stderr)
            sys.exit(255)
        print(json.dumps(outputs, indent=4))
        """), encoding="utf-8")
    script.chmod(0o755)


def test_stacks_are_read_through_pulumi(fresh_table: TableHandle, tmp_path: Path) -> None:
    project = tmp_path / "infra"
    project.mkdir()
    (project / "Pulumi.yaml").write_text("name: receipts\n")
    log = tmp_path / "calls.jsonl"
    fake_pulumi(tmp_path / "bin", {"dev": stack_outputs("dev", "ReceiptsTable-dev-1"),
                                   "prod": stack_outputs("prod", fresh_table.name)}, log)
    env = env_for_subprocess()
    env["PATH"] = f"{tmp_path / 'bin'}:{env['PATH']}"
    proc = run(["--no-dry-run", "--yes", "--dev-stack", "dev", "--prod-stack", "prod",
                "--pulumi-cwd", project, "--export-dir", GOLDEN_EXPORT, "--endpoint-url", fresh_table.url,
                "--no-progress"], tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "(from pulumi stack prod: dynamodb_table_name)" in proc.stdout
    assert table_items(fresh_table.client, fresh_table.name) == load_expected()  # buckets renamed
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    assert sorted(c["argv"][-1] for c in calls) == ["dev", "prod"]
    assert all(c["argv"][:4] == ["stack", "output", "--json", "--stack"] and c["cwd"] == str(project)
               for c in calls)


def test_pulumi_missing_or_failing_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "Pulumi.yaml").write_text("name: receipts\n")
    env = env_for_subprocess()
    env["PATH"] = str(tmp_path / "empty-bin")
    proc = run(["--prod-stack", "prod", "--export-dir", GOLDEN_EXPORT], tmp_path, env=env)
    assert proc.returncode == 2
    assert "--prod-stack needs the pulumi CLI, which is not on PATH" in one_error_line(proc)

    fake_pulumi(tmp_path / "bin", {"dev": stack_outputs("dev", None)}, tmp_path / "calls.jsonl")
    env["PATH"] = str(tmp_path / "bin")
    proc = run(["--prod-stack", "prod", "--export-dir", GOLDEN_EXPORT], tmp_path, env=env)
    assert proc.returncode == 2
    line = one_error_line(proc)
    assert "`pulumi stack output --json --stack prod` failed (exit 255): error: no stack named 'prod' found" \
        in line, line

    proc = run(["--prod-stack", "prod", "--prod-config", tmp_path / "prod.json"], tmp_path, env=env)
    assert proc.returncode == 2
    assert "give --prod-config or --prod-stack, not both" in one_error_line(proc)

