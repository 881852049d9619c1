"""Running the tool the way users do: as a subprocess, with one runner for every test.

* :func:`run_cli` runs ``copy_dynamodb_dev_to_prod.py`` with the given arguments and
  returns a :class:`CliResult`: exit code, stdout, stderr, seconds, and the parsed JSON
  report when ``report=`` names one;
* :func:`live_args` is the argument list of a live copy of an export into a table;
* :func:`run_through` runs that copy through a fault proxy; :func:`in_process_config` is its
  configuration for tests that drive the tool's classes in-process;
* :class:`Terminal` is the one pseudo-terminal driver (the tool, or a shell line, with a
  terminal as any of its streams: wait for a text, type, signal); :func:`run_on_pty` runs the
  tool on one and answers the confirmation prompt (or a shell line, e.g. a printed command);
* :func:`summary_errors`, :func:`summary_counts`, :func:`summary_entities` read the summary.

The environment comes from ``servers.env_for_subprocess`` (dummy credentials, nothing of the
developer's AWS setup), unless a test passes its own.
"""

from __future__ import annotations

import json
import os
import pty
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

from fault_proxy import FaultProxy
from items import GOLDEN_EXPORT, REPO_ROOT
from servers import REGION, env_for_subprocess
from waiting import wait_for

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


def kill_9(proc: subprocess.Popen[Any]) -> None:
    """kill -9 the tool's process while it runs, and reap it: what a crash leaves behind."""
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    assert proc.returncode == -signal.SIGKILL


def kill_if_running(proc: subprocess.Popen[Any]) -> None:
    """A test's tool process that is still running is killed and reaped (cleanup after a
    failed wait or a signal test)."""
    if proc.poll() is None:
        proc.kill()
        proc.wait(10)


def live_args(table: str, url: str, export_dir: Path = GOLDEN_EXPORT, *extra: str) -> list[str]:
    """Arguments of a live, unattended copy of ``export_dir`` into ``table`` at ``url`` with the
    golden bucket names."""
    return ["--no-dry-run", "--yes", "--table", table, "--endpoint-url", url, "--region", REGION,
            "--export-dir", str(export_dir), *BUCKET_FLAGS, "--no-progress", *extra]


class Endpoint(Protocol):
    """A table on a local engine (conftest's ``TableHandle``)."""

    name: str
    url: str


def reads_items(operation: str, body: bytes) -> bool:
    """A BatchGetItem of whole items (the first items of images prod lacks, or every key of one
    it holds in part), not the check which IMAGE items prod holds (projected on PK): for
    ``run_through(..., only=reads_items)``."""
    return operation == "BatchGetItem" and b"ProjectionExpression" not in body


def run_through(table: Endpoint, tmp_path: Path, *extra: str, faults: list[str], target: str,
                live: bool = True, name: str = "r", export: Path = GOLDEN_EXPORT,
                only: Callable[[str, bytes], bool] | None = None) -> tuple[CliResult, FaultProxy]:
    """A copy of ``export`` (default: the golden one) into ``table`` through a fault proxy that
    injects ``faults`` into every ``target`` request (``live=False``: a dry run reading the
    table). The report is ``tmp_path/<name>.json``."""
    proxy = FaultProxy(table.url, rate=1.0, faults=faults, targets=[target], only=only)
    args = live_args(table.name, proxy.url, export, *extra)
    if not live:
        args = [a for a in args if a not in ("--no-dry-run", "--yes")]
    try:
        result = run_cli(args, report=tmp_path / f"{name}.json")
    finally:
        proxy.stop()
    return result, proxy


#: What a confirmation prompt looks like on the terminal.
PROMPT = re.compile(r"(?i)type 'yes'|continue\?|\[y/n\]|confirm")
STREAMS = ("stdin", "stdout", "stderr")


class Terminal:
    """The one pseudo-terminal driver: ``command`` runs with a pseudo-terminal as the streams
    named in ``on_terminal`` (default all three); a stdin that is not on it is closed
    (``/dev/null``), a stdout/stderr that is not on it is captured (``stdout``/``stderr``).
    Threads read everything as it comes, so the test can wait for a text on the terminal
    (:meth:`wait_for_output`), type (:meth:`type`), signal (:meth:`send_signal`) and wait for
    the exit (:meth:`wait`). Use it as a context manager: leaving kills a process still running.
    The terminal is not the process's controlling one: Ctrl-C is ``send_signal(SIGINT)``."""

    def __init__(self, command: Sequence[str], *, env: Mapping[str, str] | None = None,
                 cwd: Path | None = None, on_terminal: Sequence[str] = STREAMS) -> None:
        assert set(on_terminal) <= set(STREAMS), on_terminal
        self.command = list(command)
        self.master, slave = pty.openpty()
        stdin: Any = slave if "stdin" in on_terminal else subprocess.DEVNULL
        stdout: Any = slave if "stdout" in on_terminal else subprocess.PIPE
        stderr: Any = slave if "stderr" in on_terminal else subprocess.PIPE
        try:
            self.proc = subprocess.Popen(
                self.command, env=dict(env) if env is not None else env_for_subprocess(),
                cwd=str(cwd or REPO_ROOT), stdin=stdin, stdout=stdout, stderr=stderr, close_fds=True)
        except BaseException:
            os.close(self.master)
            raise
        finally:
            os.close(slave)
        self._terminal: list[bytes] = []
        self._pipes: dict[str, list[bytes]] = {}
        self._readers = [threading.Thread(target=self._read_terminal, daemon=True)]
        for name, pipe in (("stdout", self.proc.stdout), ("stderr", self.proc.stderr)):
            if pipe is not None:
                chunks: list[bytes] = []
                self._pipes[name] = chunks
                self._readers.append(threading.Thread(target=self._read_pipe, args=(pipe, chunks),
                                                      daemon=True))
        for reader in self._readers:
            reader.start()
        self._closed = False

    def _read_terminal(self) -> None:
        while True:
            try:
                chunk = os.read(self.master, 65536)
            except OSError:  # EIO: every process holding the terminal has closed it
                return
            if not chunk:
                return
            self._terminal.append(chunk)

    @staticmethod
    def _read_pipe(pipe: Any, chunks: list[bytes]) -> None:
        for chunk in iter(lambda: pipe.read1(65536), b""):
            chunks.append(chunk)

    @property
    def output(self) -> str:
        """Everything written to the terminal so far."""
        return b"".join(self._terminal).decode("utf-8", "replace")

    @property
    def stdout(self) -> str:
        """The captured stdout (empty when stdout is the terminal)."""
        return b"".join(self._pipes.get("stdout", [])).decode("utf-8", "replace")

    @property
    def stderr(self) -> str:
        """The captured stderr (empty when stderr is the terminal)."""
        return b"".join(self._pipes.get("stderr", [])).decode("utf-8", "replace")

    def describe(self) -> str:
        """For assertion messages."""
        code = self.proc.poll()
        return (f"{' '.join(self.command)[-300:]}\n{'running' if code is None else f'exit {code}'}"
                f"\n--- terminal ---\n{self.output[-4000:]}\n--- stdout ---\n{self.stdout[-4000:]}"
                f"\n--- stderr ---\n{self.stderr[-4000:]}")

    def wait_for_output(self, pattern: str | re.Pattern[str], *, timeout: float = 120,
                        what: str | None = None) -> str:
        """Wait until the terminal shows ``pattern`` (a text, or a regular expression); fail if
        the process exits without showing it. Returns the terminal output at that moment."""

        def seen() -> str | None:
            out = self.output
            found = pattern.search(out) if isinstance(pattern, re.Pattern) else pattern in out
            return out if found else None

        def ended() -> str | None:
            if self.proc.poll() is None or self._readers[0].is_alive():
                return None
            return f"the process exited {self.proc.returncode} without showing it"

        return wait_for(seen, timeout=timeout, what=what or f"{pattern!r} on the terminal",
                        give_up=ended, details=self.describe)

    def type(self, text: str) -> None:
        """Type ``text`` on the terminal (with the newline, if one is wanted)."""
        os.write(self.master, text.encode())

    def send_signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 120) -> int:
        """Wait for the exit and for everything written to have been read; the exit code."""
        code = self.proc.wait(timeout)
        for reader in self._readers:
            reader.join(10)
        return code

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        for reader in self._readers:
            reader.join(10)
        os.close(self.master)

    def __enter__(self) -> Terminal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def run_on_pty(args: Sequence[Any], answer: str | None, timeout: float = 60, *,
               shell_line: str | None = None, env: Mapping[str, str] | None = None) -> tuple[int, str, str]:
    """Run the tool on a :class:`Terminal` (stdin, stdout and stderr) and answer its confirmation
    prompt (``answer=None``: Ctrl-C instead, a SIGINT sent once the prompt is shown).
    ``shell_line``: run this line with bash in the repository instead (a command the tool
    printed, run exactly as printed; ``args`` is then ignored). ``env``: default
    ``env_for_subprocess()``. Returns (exit code, output before the answer, whole output)."""
    deadline = time.monotonic() + timeout
    command = ["bash", "-c", shell_line] if shell_line is not None else tool_command(args)
    with Terminal(command, env=env) as term:
        before = term.wait_for_output(PROMPT, timeout=timeout, what="the confirmation prompt")
        time.sleep(0.1)  # the prompt is printed just before the tool reads its answer
        if answer is None:
            term.send_signal(signal.SIGINT)
        else:
            term.type(answer + "\n")
        code = term.wait(timeout=max(1.0, deadline - time.monotonic()))
        return code, before, term.output


def in_process_config(table: str, url: str, *extra: str) -> tool.Config:
    """The configuration a live copy of the golden export into ``table`` at ``url`` runs
    with, for tests that run the tool's classes in-process."""
    args = tool.build_parser().parse_args(live_args(table, url, GOLDEN_EXPORT, *extra))
    return tool.resolve_config(args, {})[0]


def copy_in_process(cfg: tool.Config, client: Any) -> tool.Report:
    """The copy as main runs it (confirmed: --yes), in this process, through ``client``."""
    cfg = replace(cfg, yes=True)
    prod = tool.ProdTable(cfg, client)
    report = tool.Report(cfg, prod)
    tool.run_copy(cfg, tool.ConfigOrigin(), report, prod)
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
