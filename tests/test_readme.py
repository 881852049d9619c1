"""The README's own commands, run as written, in order, against a moto server.

Every ```sh block of README.md is read; each command that runs this tool is run with bash in a
scratch directory laid out as the README leaves a fresh clone: the tool, `dev.export`,
`.venv/bin/python` (a wrapper around the Python running the tests, which has the requirements),
and `dev.json`/`prod.json` as `pulumi stack output --json` prints them, prod.json naming a fresh
table on the session's moto server (reached through `AWS_ENDPOINT_URL_DYNAMODB`, as an operator's
environment would point at AWS). Step Functions and SQS are a moto server of this module's own
that runs workflows (`AWS_ENDPOINT_URL_SFN`/`_SQS`): every workflow the README names is a
callback machine answered by the embedding pipeline's stand-in, so the waves' rounds end.
stdin is a terminal that answers "yes", so the copy that asks
for confirmation is confirmed as a user would. Installs, the test suite and the benchmark are
the only commands not run here; any other command the test does not know fails it.

One substitution: the AWS Batch example's `/data/dev.export` (a container path) becomes
`dev.export`.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

from cli import TOOL, Terminal
from conftest import TableHandle
from items import DEV_EXPORT, GOLDEN_EXPECTED, REPO_ROOT, assert_items_equal, load_expected, table_items
from servers import EMBEDDING_ROLE, README_MACHINES, env_for_subprocess, make_service_client
from waves import Pipeline, callback_definition, embedded

README = REPO_ROOT / "README.md"
# What the README's wave recipe names: the receipt system's four workflows as Pulumi names
# them (a random suffix) and its compaction queues with their dead-letter queues.
PIPELINE_MACHINES = tuple(f"{kind}-{step}-sf-prod-{n}a7c9e1" for n, (kind, step) in enumerate(
    [("line", "submit"), ("word", "submit"), ("line", "ingest"), ("word", "ingest")]))
COMPACTION_QUEUES = ("lines-compaction-queue", "words-compaction-queue",
                     "lines-compaction-dlq", "words-compaction-dlq")
SUBSTITUTIONS = {"/data/dev.export": "dev.export"}
NOT_RUN_HERE = (  # installs (need the network), the test suite itself, the benchmark
    re.compile(r"^python3 -m venv \.venv$"),
    re.compile(r"^\.venv/bin/pip install( -q)? -r requirements(-dev)?\.txt$"),
    re.compile(r"^bash tests/install_\w+\.sh$"),
    re.compile(r"^\.venv/bin/python -m pytest( .*)?$"),
    re.compile(r"^\.venv/bin/python benchmarks/bench_copy\.py( .*)?$"),
)


def readme_commands() -> list[str]:
    """The commands of the README's sh blocks, in order: continuations joined, comment lines
    dropped, `a && b` split into its parts."""
    commands = []
    for block in re.findall(r"^```sh\n(.*?)^```", README.read_text(encoding="utf-8"), re.M | re.S):
        text = block.replace("\\\n", " ")
        for line in text.splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                commands += [part.strip() for part in line.split(" && ")]
    return commands


def tool_commands() -> list[str]:
    commands = readme_commands()
    unknown = [c for c in commands
               if "copy_dynamodb_dev_to_prod.py" not in c and not any(p.match(c) for p in NOT_RUN_HERE)]
    assert not unknown, f"README commands this test does not know how to run: {unknown}"
    return [c for c in commands if "copy_dynamodb_dev_to_prod.py" in c]


def scratch_clone(root: Path, table: str) -> Path:
    """What a fresh clone looks like after the README's install line."""
    root.mkdir()
    shutil.copy2(TOOL, root / TOOL.name)
    shutil.copytree(DEV_EXPORT, root / "dev.export")
    venv_bin = root / ".venv" / "bin"
    venv_bin.mkdir(parents=True)
    (venv_bin / "python").write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    (venv_bin / "python").chmod(0o755)
    for stage, table_name in (("dev", "ReceiptsTable-dev-0000"), ("prod", table)):
        (root / f"{stage}.json").write_text(json.dumps({
            "dynamodb_table_name": table_name, "raw_bucket_name": f"{stage}-raw-bucket",
            "cdn_bucket_name": f"{stage}-cdn-bucket", "api_url": "https://example.invalid"}))
    return root


def run_on_a_terminal(command: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """bash -c COMMAND with stdin a terminal that has "yes" typed into it; stdout/stderr captured."""
    with Terminal(["bash", "-c", command], cwd=cwd, env=env, on_terminal=["stdin"]) as term:
        term.type("yes\n")
        code = term.wait(300)
        return subprocess.CompletedProcess(command, code, term.stdout, term.stderr)


def start_pipeline(table: TableHandle, sfn_url: str) -> Pipeline:
    """Every workflow the README names, as callback machines answered by the embedding
    pipeline's stand-in (waves.Pipeline: it embeds every NONE line or word of the machine's
    kind, then lets the execution succeed), and the compaction queues, empty."""
    sqs, sfn = make_service_client(sfn_url, "sqs"), make_service_client(sfn_url, "stepfunctions")
    queues = {kind: sqs.create_queue(QueueName=f"readme-{kind}-tokens")["QueueUrl"]
              for kind in ("line", "word")}
    for name in (*README_MACHINES, *PIPELINE_MACHINES):
        kind = "line" if "line" in name else "word"
        sfn.create_state_machine(name=name, definition=callback_definition(queues[kind]),
                                 roleArn=EMBEDDING_ROLE)
    for name in COMPACTION_QUEUES:
        sqs.create_queue(QueueName=name)
    return Pipeline(table, sfn_url, queues)


def test_readme_commands_run_as_written(fresh_table: TableHandle, sfn_url: str, tmp_path: Path) -> None:
    commands = tool_commands()
    assert len(commands) >= 8, commands
    pipeline = start_pipeline(fresh_table, sfn_url)
    try:
        outputs = run_readme(commands, fresh_table, sfn_url, tmp_path)
    finally:
        pipeline.close()
    check_outcome(outputs, fresh_table, tmp_path / "clone")


def run_readme(commands: list[str], fresh_table: TableHandle, sfn_url: str, tmp_path: Path) -> dict[str, str]:
    clone = scratch_clone(tmp_path / "clone", fresh_table.name)
    env = env_for_subprocess(fresh_table.url)
    env.update(AWS_ENDPOINT_URL_SFN=sfn_url, AWS_ENDPOINT_URL_SQS=sfn_url,
               AWS_BATCH_JOB_ARRAY_INDEX="0", N="1")
    outputs = {}
    for command in commands:
        for old, new in SUBSTITUTIONS.items():
            command = command.replace(old, new)
        proc = run_on_a_terminal(command, clone, env)
        text = proc.stdout + proc.stderr
        assert proc.returncode == 0, f"README command failed (exit {proc.returncode}): {command}\n{text}"
        for bad in ("Traceback", "error:", "WARNING"):
            assert bad not in text, f"{command}\n{text}"
        outputs[command] = proc.stdout
    return outputs


def check_outcome(outputs: dict[str, str], fresh_table: TableHandle, clone: Path) -> None:
    # The copy happened (confirmed on the terminal), every item as the golden vectors say, its
    # lines and words embedded by the workflows the README started.
    golden = [p.stem for p in (clone / "dev.export").glob("*.json")
              if (GOLDEN_EXPECTED / f"{p.stem}.jsonl").exists()]
    assert_items_equal(table_items(fresh_table.client, fresh_table.name), embedded(load_expected(golden)))
    assert (clone / "copy-report.json").exists() and (clone / "report-0.json").exists()
    asked = [out for cmd, out in outputs.items() if "--no-dry-run" in cmd and "--yes" not in cmd]
    # a live run asks before it writes; one with nothing to write says so and asks nothing
    assert any("Type 'yes' to continue" in out for out in asked), asked
    assert all("Type 'yes' to continue" in out or "not asking for confirmation" in out
               for out in asked), asked
    verify = next(out for cmd, out in outputs.items() if "--verify" in cmd)
    assert "(0 of them with missing or different items), 0 not checked" in verify, verify
    status = [out for cmd, out in outputs.items() if "--status" in cmd]
    assert status and all("receipt lines waiting:" in out for out in status)
