"""Running the tool the way users do: as a subprocess, with one runner for every test.

* :func:`run_cli` runs ``copy_dynamodb_dev_to_prod.py`` with the given arguments and
  returns a :class:`CliResult`: exit code, stdout, stderr, seconds, and the parsed JSON
  report when ``report=`` names one;
* :func:`live_args` is the argument list of a live copy of an export into a table;
* :func:`run_through` runs that copy through a fault proxy, :func:`run_on_pty` with a
  terminal that answers the confirmation prompt (or a shell line, e.g. a printed command),
  :func:`in_process_config` is its configuration for tests that drive the tool's classes
  in-process;
* :func:`summary_errors`, :func:`summary_counts`, :func:`summary_entities` read the summary.

The environment comes from ``servers.env_for_subprocess`` (dummy credentials, nothing of the
developer's AWS setup), unless a test passes its own.
"""

from __future__ import annotations

import json
import os
import pty
import re
import select
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

from fault_proxy import FaultProxy
from items import GOLDEN_EXPORT, REPO_ROOT
from servers import REGION, env_for_subprocess

import copy_dynamodb_dev_to_prod as tool

TOOL = REPO_ROOT / "copy_dynamodb_dev_to_prod.py"

# The bucket names the golden vectors were generated with.
BUCKET_FLAGS = (
    "--dev-raw-bucket",
    "dev-raw-bucket",
    "--prod-raw-bucket",
    "prod-raw-bucket",
    "--dev-cdn-bucket",
    "dev-cdn-bucket",
    "--prod-cdn-bucket",
    "prod-cdn-bucket",
)
RAW_BUCKETS = {"dev-raw-bucket": "prod-raw-bucket"}
CDN_BUCKETS = {"dev-cdn-bucket": "prod-cdn-bucket"}


@dataclass
class CliResult:
    """What one run of the tool left: exit code, output, and its report (if one was asked for
    and written)."""

    returncode: int
    stdout: str
    stderr: str
    seconds: float
    report: dict[str, Any] | None

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    def describe(self) -> str:
        """For assertion messages."""
        return (f"exit {self.returncode} after {self.seconds:.1f}s\n--- stdout ---\n{self.stdout[-4000:]}"
                f"\n--- stderr ---\n{self.stderr[-4000:]}")


def tool_command(args: Sequence[Any], python: Sequence[str] | None = None) -> list[str]:
    """The command line that runs the tool with ``args`` (for tests that need a Popen);
    ``python``: the interpreter command (default: this one)."""
    return [*(python or [sys.executable]), str(TOOL), *map(str, args)]


def run_cli(
    args: Sequence[Any],
    *,
    report: Path | None = None,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = 120,
    input: str | None = None,
    python: Sequence[str] | None = None,
) -> CliResult:
    """Run the tool as a subprocess and wait for it. ``report``: add ``--report PATH`` (an old
    file there is removed first) and parse it afterwards. ``input``: text on stdin (default:
    stdin is closed, so it is never a terminal). ``python``: the interpreter command."""
    cmd = tool_command(args, python)
    if report is not None:
        report.unlink(missing_ok=True)
        cmd += ["--report", str(report)]
    start = time.monotonic()
    proc = subprocess.run(
        cmd,
        env=dict(env) if env is not None else env_for_subprocess(),
        cwd=str(cwd or REPO_ROOT),
        input=input,
        stdin=subprocess.DEVNULL if input is None else None,
        capture_output=True,
        text=True,
        encoding="utf-8",
        errors="replace",
        timeout=timeout,
    )
    seconds = time.monotonic() - start
    data = json.loads(report.read_text(encoding="utf-8")) if report is not None and report.exists() else None
    return CliResult(proc.returncode, proc.stdout, proc.stderr, seconds, data)


def live_args(table: str, url: str, export_dir: Path = GOLDEN_EXPORT, *extra: str) -> list[str]:
    """Arguments of a live, unattended copy of ``export_dir`` into ``table`` at ``url`` with the
    golden bucket names."""
    return ["--no-dry-run", "--yes", "--table", table, "--endpoint-url", url, "--region", REGION,
            "--export-dir", str(export_dir), *BUCKET_FLAGS, "--no-progress", *extra]


class Endpoint(Protocol):
    """A table on a local engine (conftest's ``TableHandle``)."""

    name: str
    url: str


def run_through(table: Endpoint, tmp_path: Path, *extra: str, faults: list[str], target: str,
                live: bool = True, name: str = "r",
                export: Path = GOLDEN_EXPORT) -> tuple[CliResult, FaultProxy]:
    """A copy of ``export`` (default: the golden one) into ``table`` through a fault proxy that
    injects ``faults`` into every ``target`` request (``live=False``: a dry run reading the
    table). The report is ``tmp_path/<name>.json``."""
    proxy = FaultProxy(table.url, rate=1.0, faults=faults, targets=[target])
    args = live_args(table.name, proxy.url, export, *extra)
    if not live:
        args = [a for a in args if a not in ("--no-dry-run", "--yes")]
    try:
        result = run_cli(args, report=tmp_path / f"{name}.json")
    finally:
        proxy.stop()
    return result, proxy


def run_on_pty(args: list[str], answer: str | None, timeout: float = 60, *,
               shell_line: str | None = None, env: Mapping[str, str] | None = None) -> tuple[int, str, str]:
    """Run the tool with a pseudo-terminal as stdin/stdout/stderr; answer its prompt
    (``answer=None``: Ctrl-C instead, a SIGINT sent once the prompt is shown).
    ``shell_line``: run this line with bash in the repository instead (a command the tool
    printed, run exactly as printed; ``args`` is then ignored). ``env``: default
    ``env_for_subprocess()``. Returns (exit code, output before the answer, whole output)."""
    master, slave = pty.openpty()
    command = ["bash", "-c", shell_line] if shell_line is not None else tool_command(args)
    proc = subprocess.Popen(command, env=dict(env) if env is not None else env_for_subprocess(),
                            cwd=REPO_ROOT, stdin=slave, stdout=slave, stderr=slave, close_fds=True)
    os.close(slave)
    out = b""
    before = ""
    answered = False
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.1)
            if ready:
                try:
                    chunk = os.read(master, 4096)
                except OSError:  # EIO: the child closed the terminal
                    break
                if not chunk:
                    break
                out += chunk
            if not answered and re.search(rb"(?i)type 'yes'|continue\?|\[y/n\]|confirm", out):
                before = out.decode("utf-8", "replace")
                time.sleep(0.1)
                if answer is None:
                    proc.send_signal(signal.SIGINT)
                else:
                    os.write(master, answer.encode() + b"\n")
                answered = True
            if proc.poll() is not None and not ready:
                break
        proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    assert answered, f"no confirmation prompt seen:\n{out.decode('utf-8', 'replace')}"
    return proc.returncode, before, out.decode("utf-8", "replace")


def in_process_config(table: str, url: str, *extra: str) -> tool.Config:
    """The configuration a live copy of the golden export into ``table`` at ``url`` runs
    with, for tests that run the tool's classes in-process."""
    args = tool.build_parser().parse_args(live_args(table, url, GOLDEN_EXPORT, *extra))
    return tool.resolve_config(args, {})


def copy_in_process(cfg: tool.Config, client: Any) -> tool.Report:
    """The copy as main runs it (confirmed: --yes), in this process, through ``client``."""
    cfg = replace(cfg, yes=True)
    prod = tool.ProdTable(cfg, client)
    report = tool.Report(cfg, prod)
    tool.run_copy(cfg, report, prod)
    return report


# --------------------------------------------------------------------------- the summary


def summary_errors(stdout: str) -> list[str]:
    """The lines of the summary's ``Errors:`` section."""
    lines = stdout.splitlines()
    if "Errors:" not in lines:
        return []
    out = []
    for line in lines[lines.index("Errors:") + 1 :]:
        if not line.startswith("  "):
            break
        out.append(line.strip())
    return out


def summary_counts(stdout: str) -> dict[str, str]:
    """``Label: value`` lines of the summary (value text as printed, e.g. ``1,050``)."""
    out: dict[str, str] = {}
    for line in stdout.splitlines():
        if ":" in line and not line.startswith(" "):
            label, _, value = line.partition(":")
            if value.strip():
                out[label.strip()] = value.strip()
    return out


def summary_entities(stdout: str) -> dict[str, str]:
    """The ``Entity counts (images copied):`` section (``images to copy`` in a dry run) as
    {list name: printed count}."""
    lines = stdout.splitlines()
    start = [n for n, line in enumerate(lines) if line.startswith("Entity counts (")]
    assert len(start) == 1, stdout
    out = {}
    for line in lines[start[0] + 1 :]:
        if not line.startswith("  "):
            break
        name, _, value = line.strip().partition(": ")
        out[name] = value
    return out
