"""The README's own commands, run as written, in order, against the README's own rehearsal.

Every ```sh block of README.md is read; each command that runs this tool or the rehearsal
(`tests/rehearse.py`) is run with bash in a scratch directory laid out as the README leaves a
fresh clone: the tool, `dev.export`, `tests/` (the repository's), and `.venv/bin/python` (a
wrapper around the Python running the tests, which has the requirements). The "Rehearse locally"
section's first block starts the rehearsal (on free ports: `REHEARSAL_*_PORT=0`) and loads its
environment: `. ./rehearsal.env` is sourced by bash, and the environment it leaves is the one
every later command gets, as in the operator's shell. The rehearsal writes `dev.json` and
`prod.json`, and every workflow the README names is a callback machine its pipeline player
answers, so the waves' rounds end. stdin is a terminal that answers "yes", so the copy that asks
for confirmation is confirmed as a user would. The rehearsal's stop command runs last, after the
prod table is checked, and no process of the rehearsal may be left. Installs, the test suite and
the benchmark are the only commands not run here; any other command the test does not know
fails it.

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
from items import DEV_EXPORT, GOLDEN_EXPECTED, REPO_ROOT, assert_items_equal, load_expected, table_items
from rehearse import PID_FILE, STATE_DIR, ours
from servers import env_for_subprocess, make_client
from waves import embedded

README = REPO_ROOT / "README.md"
SUBSTITUTIONS = {"/data/dev.export": "dev.export"}
NOT_RUN_HERE = (  # installs (need the network), the test suite itself, the benchmark
    re.compile(r"^python3 -m venv \.venv$"),
    re.compile(r"^\.venv/bin/pip install( -q)? -r requirements(-dev)?\.txt$"),
    re.compile(r"^bash tests/install_\w+\.sh$"),
    re.compile(r"^\.venv/bin/python -m pytest( .*)?$"),
    re.compile(r"^\.venv/bin/python benchmarks/bench_copy\.py( .*)?$"),
)
REHEARSAL = re.compile(r"^\.venv/bin/python tests/rehearse\.py (start|stop|state)( .*)?$")
LOAD_ENV = ". ./rehearsal.env"


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


def commands_run_here() -> list[str]:
    """The README's commands this test runs, in order: the rehearsal's, loading its
    environment, and the tool's."""
    commands = readme_commands()
    run = [c for c in commands if "copy_dynamodb_dev_to_prod.py" in c or REHEARSAL.match(c) or c == LOAD_ENV]
    unknown = [c for c in commands if c not in run and not any(p.match(c) for p in NOT_RUN_HERE)]
    assert not unknown, f"README commands this test does not know how to run: {unknown}"
    return run


def scratch_clone(root: Path) -> Path:
    """What a fresh clone looks like after the README's install line."""
    root.mkdir()
    shutil.copy2(TOOL, root / TOOL.name)
    shutil.copytree(DEV_EXPORT, root / "dev.export")
    (root / "tests").symlink_to(REPO_ROOT / "tests", target_is_directory=True)
    venv_bin = root / ".venv" / "bin"
    venv_bin.mkdir(parents=True)
    (venv_bin / "python").write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    (venv_bin / "python").chmod(0o755)
    return root


def run_on_a_terminal(command: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """bash -c COMMAND with stdin a terminal that has "yes" typed into it; stdout/stderr captured."""
    with Terminal(["bash", "-c", command], cwd=cwd, env=env, on_terminal=["stdin"]) as term:
        term.type("yes\n")
        code = term.wait(300)
        return subprocess.CompletedProcess(command, code, term.stdout, term.stderr)


def sourced(command: str, cwd: Path, env: dict[str, str]) -> dict[str, str]:
    """The environment bash has after ``command`` (e.g. `. ./rehearsal.env`)."""
    proc = subprocess.run(["bash", "-c", f"{command} && env -0"], cwd=cwd, env=env, capture_output=True,
                          check=True, timeout=30)
    return dict(line.split("=", 1) for line in proc.stdout.decode().split("\0") if "=" in line)


def test_readme_commands_run_as_written(tmp_path: Path) -> None:
    commands = commands_run_here()
    assert len([c for c in commands if "copy_dynamodb_dev_to_prod.py" in c]) >= 8, commands
    rehearsal = [c for c in commands if REHEARSAL.match(c) or c == LOAD_ENV]
    assert " start" in rehearsal[0] and rehearsal[1] == LOAD_ENV, \
        f"the README's rehearsal must start, then its environment be loaded: {rehearsal}"
    first = commands.index(rehearsal[0])
    assert commands[first + 1] == LOAD_ENV and all("--dry-run" in c for c in commands[:first]), \
        f"before the rehearsal only offline dry runs: {commands[:first + 2]}"
    stops = [c for c in commands if REHEARSAL.match(c) and " stop" in c]
    assert stops, "the README never stops the rehearsal"
    clone = scratch_clone(tmp_path / "clone")
    env = env_for_subprocess(extra={"AWS_BATCH_JOB_ARRAY_INDEX": "0", "N": "1",
                                    "REHEARSAL_DYNAMODB_PORT": "0", "REHEARSAL_MOTO_PORT": "0"})
    pid_file = clone / STATE_DIR / PID_FILE
    processes: list[dict[str, object]] = []
    stopped = False
    try:
        outputs = {}
        for command in [c for c in commands if c not in stops]:
            if command == LOAD_ENV:
                env = sourced(command, clone, env)
                continue
            outputs[command] = run_readme_command(command, clone, env)
            if not processes and pid_file.exists():
                processes = json.loads(pid_file.read_text())["processes"]
        assert {str(p["name"]) for p in processes} >= {"moto", "pipeline player"}, processes
        check_outcome(outputs, clone, env)
        check_practice_states(commands, clone, env)
        for command in stops:
            outputs[command] = run_readme_command(command, clone, env)
        stopped = True
        assert "Stopped" in outputs[stops[0]], outputs[stops[0]]
    finally:
        if not stopped and pid_file.exists():
            run_on_a_terminal(stops[0] if stops else ".venv/bin/python tests/rehearse.py stop", clone, env)
    left = [p for p in processes if ours(p)]
    assert not left, f"the rehearsal's stop left processes behind: {left}"
    assert not pid_file.exists()


def run_readme_command(command: str, clone: Path, env: dict[str, str]) -> str:
    for old, new in SUBSTITUTIONS.items():
        command = command.replace(old, new)
    proc = run_on_a_terminal(command, clone, env)
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"README command failed (exit {proc.returncode}): {command}\n{text}"
    for bad in ("Traceback", "error:", "WARNING"):
        assert bad not in text, f"{command}\n{text}"
    return proc.stdout


def check_outcome(outputs: dict[str, str], clone: Path, env: dict[str, str]) -> None:
    # The copy happened (confirmed on the terminal) into the table prod.json names, on the engine
    # the rehearsal's environment points at, every item as the golden vectors say, its lines and
    # words embedded by the workflows the README started.
    golden = [p.stem for p in (clone / "dev.export").glob("*.json")
              if (GOLDEN_EXPECTED / f"{p.stem}.jsonl").exists()]
    prod_table = json.loads((clone / "prod.json").read_text())["dynamodb_table_name"]
    client = make_client(env["AWS_ENDPOINT_URL_DYNAMODB"])
    assert_items_equal(table_items(client, prod_table), embedded(load_expected(golden)), exact_numbers=False)
    assert (clone / "copy-report.json").exists() and (clone / "report-0.json").exists()
    asked = [out for cmd, out in outputs.items() if "--no-dry-run" in cmd and "--yes" not in cmd]
    # a live run asks before it writes; one with nothing to write says so and asks nothing
    assert any("Type 'yes' to continue" in out for out in asked), asked
    assert all("Type 'yes' to continue" in out or "not asking for confirmation" in out
               for out in asked), asked
    # the copy took the images' S3 objects along (--copy-objects), and verify found them all
    objects = json.loads((clone / "copy-report.json").read_text())["objects"]
    assert objects["copied"] > 0 and objects["missing_in_source"] == 0, objects
    assert objects["copied"] + objects["already_present"] == objects["referenced"], objects
    verify = next(out for cmd, out in outputs.items() if "--verify" in cmd)
    assert "and its buckets (0 of them with missing or different items or objects), 0 not checked" \
        in verify, verify
    status = [out for cmd, out in outputs.items() if "--status" in cmd]
    assert status and all("receipt lines waiting:" in out for out in status)


def check_practice_states(commands: list[str], clone: Path, env: dict[str, str]) -> None:
    """The rehearsal's states worth practising on do what the README says: a message in a
    dead-letter queue makes the wave recipe's plan say the run would stop (exit 1); `healthy`
    puts it back."""
    plan = next(c for c in commands if "--wave-size" in c and "--no-dry-run" not in c)
    state = ".venv/bin/python tests/rehearse.py state"
    assert run_on_a_terminal(f"{state} dead-letter", clone, env).returncode == 0
    stopped = run_on_a_terminal(plan, clone, env)
    said = "dead-letter queue words-compaction-dlq holds 1 message"
    assert stopped.returncode == 1 and said in stopped.stdout, stopped.stdout + stopped.stderr
    assert run_on_a_terminal(f"{state} healthy", clone, env).returncode == 0
    assert run_on_a_terminal(plan, clone, env).returncode == 0
