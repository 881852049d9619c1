"""Guards that stop a run before it does harm (issue 19, item 4).

* Step Functions: a local DynamoDB (AWS_ENDPOINT_URL_DYNAMODB) with Step Functions left on AWS
  is refused, so a local rehearsal never starts prod's workflows; the header and the prompt
  name where the workflows are started.
* Outputs: --report/--dump-items never overwrite a file the run reads, and are never a FIFO,
  a socket or a device (other than /dev/null and /dev/stdout).
* Ids: an id with a trailing newline is not a UUID.
* Numbers: the 10**126 bound is exact for integers.
* Environment: every variable the tool reads is checked like a flag.
* Sides: swapped --dev-config/--prod-config are refused for a live copy (the export's buckets
  are the configured prod ones).

Every request a refused run could send to AWS goes to a recording proxy on loopback instead
(HTTPS_PROXY), so a test that fails shows what would have been contacted.
"""

from __future__ import annotations

import json
import os
import socket
import socketserver
import threading
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError
from cli import BUCKET_FLAGS, CliResult, live_args, run_cli, run_on_pty, summary_errors
from conftest import TableHandle
from exports import clone_export, copy_golden, fake_uuid, write_export
from items import GOLDEN_EXPORT, GOLDEN_IDS, IMG_META_AND_PLACE, IMG_VERBATIM, table_items
from servers import (
    REGION,
    MotoServer,
    create_pass_machines,
    env_for_subprocess,
    free_port,
    make_service_client,
)

import copy_dynamodb_dev_to_prod as tool

# --------------------------------------------------------------------------- helpers


class RecordingProxy:
    """An HTTP(S) proxy on loopback that forwards nothing: it records the first line of each
    request (``CONNECT states.us-east-1.amazonaws.com:443 HTTP/1.1``) and answers 502."""

    def __init__(self) -> None:
        self.requests: list[str] = []
        proxy = self

        class Handler(socketserver.StreamRequestHandler):
            timeout = 5  # seconds: a client that sends nothing cannot hold the thread

            def handle(self) -> None:
                try:
                    line = self.rfile.readline(4096).decode("latin-1").strip()
                except OSError:
                    return
                proxy.requests.append(line)
                try:
                    self.wfile.write(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
                except OSError:
                    pass

        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.1},
                                       daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def aws_trap() -> Iterator[RecordingProxy]:
    proxy = RecordingProxy()
    yield proxy
    proxy.stop()


def guarded_env(trap: RecordingProxy, extra: dict[str, str] | None = None) -> dict[str, str]:
    """Dummy credentials; anything not on loopback goes to the recording proxy."""
    proxies = {name: trap.url for name in ("HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy")}
    no_proxy = {"NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}
    return env_for_subprocess(extra={**proxies, **no_proxy, **(extra or {})})


def dead_url() -> str:
    return f"http://127.0.0.1:{free_port()}"  # nothing listens


def one_error_line(result: CliResult) -> str:
    assert "Traceback" not in result.stderr, result.describe()
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.describe()
    return errors[0]


GOLDEN_DRY = ["--export-dir", str(GOLDEN_EXPORT), *BUCKET_FLAGS, "--no-progress"]


# --------------------------------------------------------------------------- 1. Step Functions


@pytest.mark.parametrize("args", [
    ["--trigger-embeddings", "--no-dry-run", "--yes", "--region", REGION],
    ["--trigger-embeddings", "--region", REGION],
    [*GOLDEN_DRY, "--trigger-embeddings"],
    [*GOLDEN_DRY, "--wave-size", "2"],
], ids=["trigger-live", "trigger-dry", "copy-dry-trigger", "waves-dry"])
def test_local_dynamodb_with_step_functions_on_aws_is_refused(aws_trap: RecordingProxy,
                                                               args: list[str]) -> None:
    env = guarded_env(aws_trap, {"AWS_ENDPOINT_URL_DYNAMODB": dead_url()})
    result = run_cli(args, env=env, timeout=60)
    assert result.returncode == 2, result.describe() + f"\nproxied: {aws_trap.requests}"
    line = one_error_line(result)
    assert "AWS_ENDPOINT_URL_DYNAMODB" in line and "Step Functions" in line, line
    assert "--sfn-endpoint-url" in line and "AWS_ENDPOINT_URL_SFN" in line, line
    assert aws_trap.requests == []


@pytest.mark.parametrize("variable", ["AWS_ENDPOINT_URL_SFN", "AWS_ENDPOINT_URL_STEPFUNCTIONS",
                                      "AWS_ENDPOINT_URL"])
def test_step_functions_endpoint_from_the_environment(aws_trap: RecordingProxy, moto_server: MotoServer,
                                                      variable: str) -> None:
    """Each variable names the Step Functions endpoint (botocore reads only _SFN and the global
    one; the tool passes _STEPFUNCTIONS itself), and the run says where it starts them."""
    create_pass_machines(moto_server.url)
    env = guarded_env(aws_trap, {"AWS_ENDPOINT_URL_DYNAMODB": dead_url(), variable: moto_server.url})
    result = run_cli(["--trigger-embeddings", "--no-dry-run", "--yes", "--region", REGION], env=env,
                     timeout=60)
    assert result.returncode == 0, result.describe() + f"\nproxied: {aws_trap.requests}"
    assert f"Step Functions: {moto_server.url} (from environment {variable})" in result.stdout, result.stdout
    assert "Started the embedding workflow embedding-infra-prod-line-workflow" in result.stdout
    assert aws_trap.requests == []
    sfn = make_service_client(moto_server.url, "stepfunctions")
    machines = {m["name"]: m["stateMachineArn"] for m in sfn.list_state_machines()["stateMachines"]}
    names = [e["name"] for e in sfn.list_executions(
        stateMachineArn=machines[tool.DEFAULT_LINE_MACHINE])["executions"]]
    assert any(n.startswith("copy-dev-to-prod-") for n in names), names


def test_header_names_step_functions_when_workflows_would_start() -> None:
    """A dry run with --trigger-embeddings: the header says where the live run starts them."""
    on_aws = run_cli([*GOLDEN_DRY, "--trigger-embeddings"], env=env_for_subprocess(credentials=False))
    assert on_aws.returncode == 0, on_aws.describe()
    assert "Step Functions: (AWS)" in on_aws.stdout.splitlines(), on_aws.stdout
    url = dead_url()
    given = run_cli([*GOLDEN_DRY, "--wave-size", "3", "--sfn-endpoint-url", url],
                    env=env_for_subprocess(credentials=False))
    assert given.returncode == 0, given.describe()
    assert f"Step Functions: {url} (given as --sfn-endpoint-url)" in given.stdout.splitlines(), given.stdout
    plain = run_cli(GOLDEN_DRY, env=env_for_subprocess(credentials=False))
    assert "Step Functions" not in plain.stdout


def test_prompt_names_step_functions(ddblocal_table: TableHandle) -> None:
    live = live_args(ddblocal_table.name, ddblocal_table.url, GOLDEN_EXPORT, "--trigger-embeddings")
    args = [a for a in live if a != "--yes"]
    code, before, whole = run_on_pty(args, "no")
    assert code != 0, whole
    assert f"Step Functions: {ddblocal_table.url} (given as --endpoint-url)" in before, before
    assert table_items(ddblocal_table.client, ddblocal_table.name) == {}


# --------------------------------------------------------------------------- 2. outputs vs inputs


def pulumi_file(path: Path, **values: str) -> Path:
    path.write_text(json.dumps(values), encoding="utf-8")
    return path


@pytest.mark.parametrize("case", ["dump-over-ids", "report-over-prod-config", "report-hardlink-dev-config",
                                  "dump-symlinked-export-file", "report-hardlink-source-items"])
def test_an_output_never_overwrites_an_input(tmp_path: Path, case: str) -> None:
    export = tmp_path / "export"
    outside = tmp_path / "outside"
    outside.mkdir()
    ids = tmp_path / "ids.txt"
    ids.write_text(GOLDEN_IDS[0] + "\n", encoding="utf-8")
    buckets = {"raw_bucket_name": "dev-raw-bucket", "cdn_bucket_name": "dev-cdn-bucket"}
    dev = pulumi_file(tmp_path / "dev.json", **buckets)
    prod = pulumi_file(tmp_path / "prod.json", raw_bucket_name="prod-raw-bucket",
                       cdn_bucket_name="prod-cdn-bucket")
    base = ["--no-progress", "--dev-config", dev, "--prod-config", prod]
    if case == "dump-over-ids":
        copy_golden(export)
        args, victim = [*base, "--export-dir", export, "--image-ids-file", ids, "--dump-items", ids], ids
    elif case == "report-over-prod-config":
        copy_golden(export)
        args, victim = [*base, "--export-dir", export, "--report", prod], prod
    elif case == "report-hardlink-dev-config":
        copy_golden(export)
        os.link(dev, outside / "link.json")
        args, victim = [*base, "--export-dir", export, "--report", outside / "link.json"], dev
    elif case == "dump-symlinked-export-file":
        real = outside / f"{GOLDEN_IDS[0]}.json"
        copy_golden(outside, [GOLDEN_IDS[0]])
        export.mkdir()
        (export / real.name).symlink_to(real)
        args, victim = [*base, "--export-dir", export, "--dump-items", real], real
    else:
        items = outside / "items.jsonl"
        items.write_text("", encoding="utf-8")
        os.link(items, tmp_path / "report.json")
        args, victim = [*base, "--source-items", items, "--report", tmp_path / "report.json"], items
    before = victim.read_bytes()
    result = run_cli(args, env=env_for_subprocess(credentials=False), cwd=tmp_path, timeout=60)
    assert result.returncode == 2, result.describe()
    line = one_error_line(result)
    assert "input" in line or "reads" in line, line
    assert victim.read_bytes() == before, "an input was overwritten"


@pytest.mark.parametrize("kind", ["fifo", "socket", "device"])
@pytest.mark.parametrize("flag", ["--report", "--dump-items"])
def test_an_output_must_be_able_to_be_a_regular_file(tmp_path: Path, kind: str, flag: str) -> None:
    held: socket.socket | None = None
    if kind == "fifo":
        target = tmp_path / "out.fifo"
        os.mkfifo(target)
    elif kind == "socket":
        target = tmp_path / "out.sock"
        held = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        held.bind(str(target))
    else:
        target = Path("/dev/zero")
    try:
        result = run_cli([*GOLDEN_DRY, flag, target], env=env_for_subprocess(credentials=False), timeout=30)
    finally:
        if held is not None:
            held.close()
    assert result.returncode == 2, result.describe()
    line = one_error_line(result)
    assert flag in line and str(target) in line and "regular file" in line, line


@pytest.mark.parametrize("path", ["/dev/null", "/dev/stdout"])
def test_dev_null_and_stdout_are_outputs(path: str) -> None:
    result = run_cli([*GOLDEN_DRY, "--report", path, "--dump-items", "/dev/null"],
                     env=env_for_subprocess(credentials=False), timeout=60)
    assert result.returncode == 0, result.describe()
    if path == "/dev/stdout":
        assert '"mode": "dry-run"' in result.stdout


# --------------------------------------------------------------------------- 3. ids


def test_an_image_id_with_a_trailing_newline_is_refused() -> None:
    result = run_cli([*GOLDEN_DRY, "--image-id", GOLDEN_IDS[0] + "\n"],
                     env=env_for_subprocess(credentials=False))
    assert result.returncode == 2, result.describe()
    assert "not an image id" in one_error_line(result)


@pytest.mark.parametrize("where", ["image_id", "job_id"])
def test_an_export_id_with_a_trailing_newline_fails_the_image(tmp_path: Path, where: str) -> None:
    export = tmp_path / "export"
    good, bad = IMG_VERBATIM, fake_uuid(7)
    copy_golden(export, [good])
    data = clone_export(IMG_META_AND_PLACE, bad)
    if where == "image_id":
        data = json.loads(json.dumps(data).replace(bad, bad + "\\n"))
        name = f"{bad}\n.json"  # the file is filed under the same id
        entity = "images"
    else:
        data["ocr_jobs"][0]["job_id"] += "\n"
        name = f"{bad}.json"
        entity = "ocr_jobs"
    write_export(export, data, name)
    result = run_cli(["--export-dir", export, *BUCKET_FLAGS, "--no-progress"],
                     env=env_for_subprocess(credentials=False), report=tmp_path / "r.json")
    assert result.returncode == 1, result.describe()
    assert result.report is not None
    assert result.report["images"]["failed"] == 1 and result.report["images"]["copied"] == 1
    (error,) = result.report["errors"]
    assert (error["entity"], error["field"]) == (entity, where), error
    assert "UUID" in error["message"], error


# --------------------------------------------------------------------------- 4. numbers

BIGGEST = int("9" * 38) * 10**88  # 38 significant digits, just below 10**126


def test_the_integer_bound_is_exact(ddblocal_table: TableHandle, tmp_path: Path) -> None:
    # DynamoDB Local itself: BIGGEST is a number it stores, 10**126 one it refuses.
    key = {"PK": {"S": "PROBE#bound"}, "SK": {"S": "PROBE"}}
    ddblocal_table.client.put_item(TableName=ddblocal_table.name, Item={**key, "n": {"N": str(BIGGEST)}})
    stored = ddblocal_table.client.get_item(TableName=ddblocal_table.name, Key=key, ConsistentRead=True)
    assert Decimal(stored["Item"]["n"]["N"]) == BIGGEST
    with pytest.raises(ClientError):
        ddblocal_table.client.put_item(TableName=ddblocal_table.name, Item={**key, "n": {"N": str(10**126)}})
    ddblocal_table.client.delete_item(TableName=ddblocal_table.name, Key=key)

    # The tool: both sides of the bound, through an export.
    assert tool.generic_value(BIGGEST) == {"N": str(BIGGEST)}
    assert tool.generic_value(-BIGGEST) == {"N": str(-BIGGEST)}
    with pytest.raises(tool.FieldError):
        tool.generic_value(10**126)
    export = tmp_path / "export"
    fits, too_big = fake_uuid(1, "b16"), fake_uuid(2, "b16")
    for image_id, value in ((fits, BIGGEST), (too_big, 10**126)):
        data = clone_export(IMG_META_AND_PLACE, image_id)
        data["receipt_places"][0]["hours_data"]["big"] = value
        write_export(export, data)
    result = run_cli(live_args(ddblocal_table.name, ddblocal_table.url, export), report=tmp_path / "r.json")
    assert result.returncode == 1, result.describe()
    assert result.report is not None
    (error,) = result.report["errors"]
    assert (error["image_id"], error["entity"], error["field"]) == (too_big, "receipt_places", "hours_data")
    items = table_items(ddblocal_table.client, ddblocal_table.name)
    places = [item for (pk, _), item in items.items()
              if pk == f"IMAGE#{fits}" and item["TYPE"]["S"] == "RECEIPT_PLACE"]
    assert len(places) == 1
    assert Decimal(places[0]["hours_data"]["M"]["big"]["N"]) == BIGGEST
    assert not any(pk == f"IMAGE#{too_big}" for pk, _ in items)


def test_an_integer_too_large_for_a_float_field_is_a_field_error() -> None:
    for codec in (tool.repr_text, lambda v: tool.fixed_text(v, 4)):
        with pytest.raises(tool.FieldError):
            codec(10**400)


# --------------------------------------------------------------------------- 5. environment


@pytest.mark.parametrize("variable,value,args", [
    ("COPY_DEV_TO_PROD_POLL_SECONDS", "abc", ["--wave-size", "2"]),
    ("COPY_DEV_TO_PROD_POLL_SECONDS", "0", ["--wave-size", "2"]),
    ("COPY_DEV_TO_PROD_POLL_SECONDS", "nan", []),
    ("AWS_ENDPOINT_URL_DYNAMODB", "abc", ["--table", "receipts-prod"]),
    ("AWS_ENDPOINT_URL_SFN", "localhost:4566", ["--trigger-embeddings"]),
    ("AWS_ENDPOINT_URL_STEPFUNCTIONS", "ftp://127.0.0.1", ["--wave-size", "2"]),
])
def test_a_bad_environment_value_is_a_usage_error(aws_trap: RecordingProxy, variable: str, value: str,
                                                  args: list[str]) -> None:
    result = run_cli([*GOLDEN_DRY, *args], env=guarded_env(aws_trap, {variable: value}), timeout=60)
    assert result.returncode == 2, result.describe()
    line = one_error_line(result)
    assert variable in line and repr(value) in line, line
    assert "Mode:" not in result.stdout  # refused before anything was done
    assert aws_trap.requests == []


# --------------------------------------------------------------------------- 6. sides


def swapped_configs(tmp_path: Path, target: str) -> list[Any]:
    """dev.json and prod.json given the wrong way round: --dev-config names prod's stack."""
    prod = pulumi_file(tmp_path / "prod.json", dynamodb_table_name="receipts-main",
                       raw_bucket_name="prod-raw-bucket", cdn_bucket_name="prod-cdn-bucket")
    dev = pulumi_file(tmp_path / "dev.json", dynamodb_table_name=target,
                      raw_bucket_name="dev-raw-bucket", cdn_bucket_name="dev-cdn-bucket")
    return ["--dev-config", prod, "--prod-config", dev]


def test_swapped_configs_are_refused_for_a_live_copy(ddblocal_table: TableHandle, tmp_path: Path) -> None:
    export = tmp_path / "export"
    copy_golden(export)
    args = ["--no-dry-run", "--yes", "--endpoint-url", ddblocal_table.url, "--region", REGION,
            "--export-dir", export, "--no-progress", *swapped_configs(tmp_path, ddblocal_table.name)]
    result = run_cli(args, report=tmp_path / "r.json")
    assert result.returncode == 2, result.describe()
    line = one_error_line(result)
    assert f"{GOLDEN_IDS[0]}.json" in line and "'dev-raw-bucket'" in line, line
    assert "--dev-config" in line and "--prod-config" in line, line
    assert table_items(ddblocal_table.client, ddblocal_table.name) == {}


def test_swapped_configs_are_a_warning_in_a_dry_run(ddblocal_table: TableHandle, tmp_path: Path) -> None:
    export = tmp_path / "export"
    copy_golden(export)
    args = ["--endpoint-url", ddblocal_table.url, "--region", REGION, "--export-dir", export, "--no-progress",
            *swapped_configs(tmp_path, ddblocal_table.name)]
    result = run_cli(args)
    assert result.returncode == 0, result.describe()
    warnings = [line for line in result.stderr.splitlines() if "'dev-raw-bucket'" in line]
    assert len(warnings) == 1 and f"{GOLDEN_IDS[0]}.json" in warnings[0], result.stderr
    assert summary_errors(result.stdout) == []


def test_configs_the_right_way_round_pass(ddblocal_table: TableHandle, tmp_path: Path) -> None:
    prod = pulumi_file(tmp_path / "prod.json", dynamodb_table_name=ddblocal_table.name,
                       raw_bucket_name="prod-raw-bucket", cdn_bucket_name="prod-cdn-bucket")
    dev = pulumi_file(tmp_path / "dev.json", dynamodb_table_name="receipts-main",
                      raw_bucket_name="dev-raw-bucket", cdn_bucket_name="dev-cdn-bucket")
    result = run_cli(["--no-dry-run", "--yes", "--endpoint-url", ddblocal_table.url, "--region", REGION,
                      "--export-dir", GOLDEN_EXPORT, "--no-progress", "--image-id", GOLDEN_IDS[0],
                      "--dev-config", dev, "--prod-config", prod])
    assert result.returncode == 0, result.describe()
    assert "bucket" not in result.stderr
