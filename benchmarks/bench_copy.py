"""Benchmark copy_dynamodb_dev_to_prod.py against local DynamoDB engines: moto and AWS's
DynamoDB Local.

Developer tool (stdlib + boto3 + moto; Java and DynamoDB Local for that engine).  It never
talks to AWS: every boto3 client and every subprocess gets dummy credentials and a 127.0.0.1
endpoint.

    DDBLOCAL_DIR=.ddblocal python benchmarks/bench_copy.py --images 80 --threads 10 --repeats 3
    DDBLOCAL_DIR=.ddblocal python benchmarks/bench_copy.py --engines ddblocal --threads 4,10 --delay-ms 100

What it measures, per engine (--engines moto,ddblocal), each measurement on a fresh engine
process (moto never gives memory back; DynamoDB Local slows down after a DeleteTable) after an
untimed warm-up of 500 items into another table (the JVM's JIT):
  floor        the dry run's items (``--dump-items``) written with plain BatchWriteItem calls
               of 25 from T threads sharing one client, ReturnConsumedCapacity=TOTAL.
  tool         the tool's live run (``--no-dry-run --yes --max-workers T``) into a fresh
               table, wall time around the subprocess (python startup included), run under
               count_requests.py so every request it sends is counted by operation.
  Floor and tool of one engine run one right after the other (a pair), which goes first
  alternates; the ratio is the tool's items/s over the floor's in the same pair.  Both
  tables are scanned afterwards and must hold the very same items.  Also reported: requests
  per operation, capacity units per item (the floor's from its responses, the tool's from its
  report), CPU seconds of the engine process and of the client (a loaded machine stretches
  wall times; CPU seconds show where the work is).
  delayed      (--delay-ms MS) both sides go through delay_proxy.py, a pass-through proxy in
               its own process in front of the engine that holds every request MS ms before
               forwarding it: the round trip a laptop pays to AWS.  The proxy also counts the
               requests by X-Amz-Target and how many were in flight on average (at most T).
               Only the measured requests go through it (warm-up, CreateTable and the final
               Scan do not).  ``--threads 4,10`` measures each thread count, pairs interleaved.
  dry run      conversion throughput of ``--dry-run`` (no table, no AWS).
  memory       (unless --skip-memory) peak RSS of a dry run and of a live run on moto for a
               small export of --memory-images M images and a big one of --big-factor x M.

Compare the tool with the floor measured in the same run, never absolute numbers across runs.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import http.client
import json
import os
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

sys.path.insert(0, str(Path(__file__).resolve().parent))
import count_requests
from gen_export import generate_export

REPO = Path(__file__).resolve().parent.parent
DEFAULT_TOOL = REPO / "copy_dynamodb_dev_to_prod.py"
COUNTER = Path(__file__).resolve().parent / "count_requests.py"
DELAY_PROXY = Path(__file__).resolve().parent / "delay_proxy.py"
REGION = "us-east-1"
BUCKET_ARGS = [
    "--dev-raw-bucket", "dev-raw-bucket", "--prod-raw-bucket", "prod-raw-bucket",
    "--dev-cdn-bucket", "dev-cdn-bucket", "--prod-cdn-bucket", "prod-cdn-bucket",
]
# Dummy credentials only; anything that could point boto3 at a real account is removed.
FAKE_AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_SECURITY_TOKEN": "testing",
    "AWS_DEFAULT_REGION": REGION,
    "AWS_REGION": REGION,
    "AWS_EC2_METADATA_DISABLED": "true",
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
}
DROP_ENV = ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE",
            "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI",
            "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_DYNAMODB")


def fake_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in DROP_ENV}
    env.update(FAKE_AWS_ENV)
    env["PYTHONUNBUFFERED"] = "1"
    return env


# --- engines -------------------------------------------------------------------------------------

ENGINES = ("moto", "ddblocal")


def terminate(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, and SIGKILL after 10 s: a helper process of the benchmark ends either way."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class Server:
    """A local DynamoDB engine in a child process on 127.0.0.1 and a free port."""

    name = "?"

    def __init__(self, cmd: list[str], log_path: Path, cwd: Path | None = None,
                 timeout: float = 60) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._log = open(log_path, "wb")
        self.proc = subprocess.Popen([*cmd, *self.port_args()], stdout=self._log,
                                     stderr=subprocess.STDOUT, env=fake_env(), cwd=cwd,
                                     start_new_session=True)
        client = make_client(self.url, 1)
        deadline = time.monotonic() + timeout
        while True:
            try:
                client.list_tables()
                return
            except (BotoCoreError, ClientError):
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"{self.name} did not start (see {log_path})") from None
                time.sleep(0.1)

    def port_args(self) -> list[str]:
        return []

    def rss_mb(self) -> float | None:
        try:
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        except OSError:
            pass
        return None

    def cpu_s(self) -> float | None:
        """CPU seconds (user + system, all threads) the engine process has used so far."""
        try:
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rpartition(")")[2].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError, IndexError):
            return None

    def stop(self) -> None:
        terminate(self.proc)
        self._log.close()


class MotoServer(Server):
    """``moto.server`` in its own process (its CPU does not share the benchmark's GIL)."""

    name = "moto"

    def __init__(self, log_path: Path) -> None:
        # Python's cyclic GC rescans moto's millions of item objects ever more often as a table
        # grows (throughput halves by ~300k items); a higher gen-0 threshold keeps it steadier.
        boot = ("import gc, sys; gc.set_threshold(100_000, 50, 100); "
                "from moto.server import main; sys.exit(main(sys.argv[1:]))")
        super().__init__([sys.executable, "-c", boot], log_path)

    def port_args(self) -> list[str]:
        return ["-H", "127.0.0.1", "-p", str(self.port)]


def ddblocal_dir() -> Path:
    return Path(os.environ.get("DDBLOCAL_DIR") or REPO / ".ddblocal")


def ddblocal_missing() -> str | None:
    if shutil.which("java") is None:
        return "java is not on PATH (DynamoDB Local needs Java 17)"
    if not (ddblocal_dir() / "DynamoDBLocal.jar").is_file():
        return (f"DynamoDB Local is not installed at {ddblocal_dir()} (set DDBLOCAL_DIR or run "
                "bash tests/install_ddblocal.sh)")
    return None


class DDBLocalServer(Server):
    """AWS's DynamoDB Local, in memory, no telemetry. A fresh process per measurement: it
    slows down ~80x after a DeleteTable, so no table is ever deleted on it."""

    name = "ddblocal"

    def __init__(self, log_path: Path) -> None:
        home = ddblocal_dir()
        super().__init__([shutil.which("java") or "java", "-Xss4m",
                          f"-Djava.library.path={home / 'DynamoDBLocal_lib'}",
                          "-jar", str(home / "DynamoDBLocal.jar"),
                          "-inMemory", "-sharedDb", "-disableTelemetry"], log_path, cwd=home)

    def port_args(self) -> list[str]:
        return ["-port", str(self.port)]


def start_server(engine: str, log_path: Path) -> Server:
    return MotoServer(log_path) if engine == "moto" else DDBLocalServer(log_path)


def make_client(url: str, threads: int) -> Any:
    return boto3.client(
        "dynamodb", endpoint_url=url, region_name=REGION,
        aws_access_key_id="testing", aws_secret_access_key="testing",
        config=Config(max_pool_connections=max(10, threads),
                      retries={"max_attempts": 10, "mode": "standard"}))


@dataclass(frozen=True)
class Setup:
    """What one series of pairs runs on: an engine, T threads (the floor's writer threads and
    the tool's --max-workers) and a delay per request (0: no proxy)."""

    engine: str
    threads: int
    delay_ms: float
    label: str


def setups(args: argparse.Namespace) -> list[Setup]:
    out = []
    for engine in args.engines:
        for threads in args.threads:
            parts = [engine]
            if len(args.threads) > 1 or args.delay_ms:
                parts.append(f"{threads} threads")
            if args.delay_ms:
                parts.append(f"+{args.delay_ms:g} ms per request")
            out.append(Setup(engine, threads, args.delay_ms, ", ".join(parts)))
    return out


class DelayProxy:
    """``delay_proxy.py`` in its own process in front of an engine: every request waits
    ``delay_ms`` before it is forwarded (a round trip to AWS), and is counted by operation."""

    def __init__(self, upstream: str, delay_ms: float, log_path: Path, timeout: float = 30) -> None:
        self._log = open(log_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, str(DELAY_PROXY), "--upstream", upstream, "--delay-ms", str(delay_ms)],
            stdout=subprocess.PIPE, stderr=self._log, env=fake_env(), start_new_session=True)
        stdout = self.proc.stdout
        assert stdout is not None
        line = [b""]
        reader = threading.Thread(target=lambda: line.__setitem__(0, stdout.readline()), daemon=True)
        reader.start()
        reader.join(timeout)
        m = re.match(rb"listening (http://127\.0\.0\.1:(\d+))", line[0])
        if not m:
            self.stop()
            raise RuntimeError(f"delay proxy did not start (see {log_path})")
        self.url = m.group(1).decode()
        self.port = int(m.group(2))
        self._base = self._get()

    def _get(self) -> dict[str, Any]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request("GET", "/__proxy/stats")
            return dict(json.loads(conn.getresponse().read()))
        finally:
            conn.close()

    def stats(self, wall_s: float) -> dict[str, Any]:
        """Requests by operation since the start, the mean number in flight over ``wall_s``
        (their summed time in the proxy, delay included, over the wall time), the most in
        flight at once, the mean time of one request in the proxy (the delay plus the
        engine's answer: far above the delay, the engine is the bottleneck, not the round
        trips), and the proxy's CPU seconds."""
        now = self._get()
        n = sum(now["requests"].values())
        return {"requests": now["requests"], "errors": now["errors"],
                "max_in_flight": now["max_in_flight"],
                "mean_in_flight": now["busy_s"] / wall_s if wall_s else None,
                "mean_request_ms": 1000 * now["busy_s"] / n if n else None,
                "cpu_s": now["cpu_s"] - self._base["cpu_s"]}

    def stop(self) -> None:
        terminate(self.proc)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._log.close()


def create_table(client: Any, name: str) -> None:
    keys = ["PK", "SK", "TYPE"] + [f"GSI{i}{k}" for i in range(1, 5) for k in ("PK", "SK")]
    gsis = [{"IndexName": f"GSI{i}",
             "KeySchema": [{"AttributeName": f"GSI{i}PK", "KeyType": "HASH"},
                           {"AttributeName": f"GSI{i}SK", "KeyType": "RANGE"}],
             "Projection": {"ProjectionType": "ALL"}} for i in range(1, 5)]
    gsis.append({"IndexName": "GSITYPE",
                 "KeySchema": [{"AttributeName": "TYPE", "KeyType": "HASH"}],
                 "Projection": {"ProjectionType": "ALL"}})
    client.create_table(
        TableName=name,
        KeySchema=[{"AttributeName": "PK", "KeyType": "HASH"},
                   {"AttributeName": "SK", "KeyType": "RANGE"}],
        AttributeDefinitions=[{"AttributeName": k, "AttributeType": "S"} for k in keys],
        GlobalSecondaryIndexes=gsis,
        BillingMode="PAY_PER_REQUEST",
        StreamSpecification={"StreamEnabled": True, "StreamViewType": "NEW_AND_OLD_IMAGES"})
    client.get_waiter("table_exists").wait(TableName=name,
                                          WaiterConfig={"Delay": 0.2, "MaxAttempts": 50})


def table_digest(client: Any, name: str) -> dict[str, Any]:
    """Item count and a SHA-256 of every item (consistent Scan, sorted): the floor's and the
    tool's tables must be identical."""
    lines = []
    kwargs: dict[str, Any] = {"TableName": name, "ConsistentRead": True}
    while True:
        page = client.scan(**kwargs)
        lines += [json.dumps(i, sort_keys=True) for i in page["Items"]]
        if "LastEvaluatedKey" not in page:
            break
        kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]
    lines.sort()
    return {"items": len(lines),
            "sha256": hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16]}


# --- measurements --------------------------------------------------------------------------------

WARMUP_ITEMS = 500  # written into a separate table first: the JVM's JIT warms up off the clock


def load_items(path: Path) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as fp:
        return [json.loads(line) for line in fp if line.strip()]


def floor_write(client: Any, table: str, items: list[dict[str, Any]], threads: int) -> dict[str, Any]:
    """Plain BatchWriteItem of 25 from ``threads`` threads sharing one client, asking for the
    consumed capacity like the tool does; returns timing, capacity and requests."""
    batches = [[{"PutRequest": {"Item": it}} for it in items[i:i + 25]]
               for i in range(0, len(items), 25)]
    retried = [0]
    units = [0.0]
    lock = threading.Lock()

    def write(batch: list[dict[str, Any]]) -> None:
        request = {table: batch}
        delay = 0.05
        while request:
            resp = client.batch_write_item(RequestItems=request, ReturnConsumedCapacity="TOTAL")
            request = resp.get("UnprocessedItems") or {}
            with lock:
                units[0] += sum(float(c.get("CapacityUnits", 0))
                                for c in resp.get("ConsumedCapacity") or [])
                retried[0] += sum(len(v) for v in request.values())
            if request:
                time.sleep(delay)
                delay = min(delay * 2, 2.0)

    counts = count_requests.install()
    counts.clear()
    t0 = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        for _ in pool.map(write, batches):
            pass
    wall = time.perf_counter() - t0
    return {"wall_s": wall, "items": len(items), "items_per_s": len(items) / wall,
            "requests": dict(counts), "unprocessed_retried": retried[0],
            "capacity": {"write_units": round(units[0], 1), "read_units": 0.0}}


def run_timed(cmd: list[str], log: Path, timeout: float | None = None) -> tuple[float, int]:
    with open(log, "wb") as fp:
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, stdout=fp, stderr=subprocess.STDOUT, env=fake_env(),
                              cwd=REPO, timeout=timeout, check=False)
        return time.perf_counter() - t0, proc.returncode


def tail(path: Path, n: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


_RSS_WRAPPER = (
    "import resource, subprocess, sys\n"
    "rc = subprocess.run(sys.argv[2:]).returncode\n"
    "open(sys.argv[1], 'w').write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss))\n"
    "sys.exit(rc)\n"
)


def run_peak_rss(cmd: list[str], log: Path) -> dict[str, Any]:
    """Run ``cmd``; return wall time, exit code and peak RSS (MB) of the process."""
    gnu_time = shutil.which("time") or ("/usr/bin/time" if Path("/usr/bin/time").exists() else None)
    rss_file = log.with_suffix(".rss")
    if gnu_time:
        wrapped = [gnu_time, "-v", "-o", str(rss_file), *cmd]
    else:
        wrapped = [sys.executable, "-c", _RSS_WRAPPER, str(rss_file), *cmd]
    wall, rc = run_timed(wrapped, log)
    peak_kb = None
    try:
        text = rss_file.read_text()
        if gnu_time:
            m = re.search(r"Maximum resident set size \(kbytes\):\s*(\d+)", text)
            peak_kb = int(m.group(1)) if m else None
        else:
            peak_kb = int(text.strip())
    except (OSError, ValueError):
        pass
    return {"wall_s": wall, "returncode": rc,
            "peak_rss_mb": None if peak_kb is None else peak_kb / 1024,
            "method": "/usr/bin/time -v" if gnu_time else "getrusage(RUSAGE_CHILDREN)"}


class Bench:
    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        self.args = args
        self.work = work
        self.tool = Path(args.tool).resolve()
        self.py = sys.executable
        self.runs = 0
        self.warmup: list[dict[str, Any]] = []

    def dry_cmd(self, export: Path, dump: Path | None = None) -> list[str]:
        cmd = [self.py, str(self.tool), "--dry-run", "--export-dir", str(export),
               *BUCKET_ARGS, "--no-progress"]
        if dump is not None:
            cmd += ["--dump-items", str(dump)]
        return cmd

    def live_cmd(self, export: Path, table: str, url: str, report: Path, threads: int) -> list[str]:
        return [self.py, str(self.tool), "--no-dry-run", "--yes", "--table", table,
                "--endpoint-url", url, "--region", REGION, "--export-dir", str(export),
                "--max-workers", str(threads), "--no-progress", *BUCKET_ARGS,
                "--report", str(report)]

    def log(self, name: str) -> Path:
        self.runs += 1
        return self.work / f"{self.runs:02d}-{name}.log"

    def dry_run(self, export: Path) -> dict[str, Any]:
        """Conversion throughput: read and convert every file, no output file (the items
        count comes from the report)."""
        log, report = self.log("dry-run"), self.work / "dry-run-report.json"
        wall, rc = run_timed([*self.dry_cmd(export), "--report", str(report)], log)
        if rc != 0 or not report.exists():
            raise ToolFailed(f"dry run failed (exit {rc}):\n{tail(log)}")
        n = json.loads(report.read_text(encoding="utf-8"))["items"]["planned"]
        return {"wall_s": wall, "items": n, "items_per_s": n / wall if wall else None}

    def dump_items(self, export: Path, dump: Path) -> None:
        """The items the floor writes (an untimed dry run with --dump-items)."""
        log = self.log("dump-items")
        _, rc = run_timed(self.dry_cmd(export, dump), log)
        if rc != 0 or not dump.exists():
            raise ToolFailed(f"dry run with --dump-items failed (exit {rc}):\n{tail(log)}")

    @contextlib.contextmanager
    def fresh_server(self, setup: Setup, table: str
                     ) -> Iterator[tuple[Server, Any, DelayProxy | None]]:
        """A new engine process holding one new, empty table (after a warm-up on another
        table, when there are items for it). moto never gives memory back and DynamoDB Local
        must not delete tables, so each measurement gets its own process.  With a delay, a
        fresh delaying proxy in front of it too, for the measured requests only (the
        warm-up, the table's creation and the final scan go to the engine directly)."""
        server = start_server(setup.engine, self.work / f"{setup.engine}-{table}.log")
        proxy = None
        try:
            client = make_client(server.url, setup.threads)
            if self.warmup:
                create_table(client, "bench-warmup")
                floor_write(client, "bench-warmup", self.warmup, setup.threads)
            create_table(client, table)
            if setup.delay_ms:
                proxy = DelayProxy(server.url, setup.delay_ms, self.work / f"proxy-{table}.log")
            yield server, client, proxy
        finally:
            if proxy is not None:
                proxy.stop()
            server.stop()

    def floor(self, setup: Setup, table: str, items: list[dict[str, Any]]) -> dict[str, Any]:
        with self.fresh_server(setup, table) as (server, client, proxy):
            writer = make_client(proxy.url, setup.threads) if proxy else client
            engine_cpu, own_cpu = server.cpu_s(), time.process_time()
            res = floor_write(writer, table, items, setup.threads)
            res["client_cpu_s"] = time.process_time() - own_cpu
            res["engine_cpu_s"] = cpu_delta(server.cpu_s(), engine_cpu)
            if proxy:
                res["proxy"] = proxy.stats(res["wall_s"])
            res["table"] = table_digest(client, table)
            res["engine_rss_mb"] = server.rss_mb()
        return res

    def live_run(self, setup: Setup, export: Path, table: str, expect: int | None,
                 rss: bool = False) -> dict[str, Any]:
        with self.fresh_server(setup, table) as (server, client, proxy):
            return self._live_run(server, client, proxy, setup.threads, export, table, expect, rss)

    def _live_run(self, server: Server, client: Any, proxy: DelayProxy | None, threads: int,
                  export: Path, table: str, expect: int | None, rss: bool) -> dict[str, Any]:
        report = self.work / f"report-{table}.json"
        counts = self.work / f"requests-{table}.json"
        log = self.log(table)
        cmd = self.live_cmd(export, table, proxy.url if proxy else server.url, report, threads)
        engine_cpu = server.cpu_s()
        if rss:
            res = run_peak_rss(cmd, log)
        else:
            # The tool under count_requests.py: every request it sends is counted.
            children = resource.getrusage(resource.RUSAGE_CHILDREN)
            wall, rc = run_timed([self.py, str(COUNTER), str(counts), *cmd[1:]], log)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            res = {"wall_s": wall, "returncode": rc,
                   "client_cpu_s": (after.ru_utime + after.ru_stime
                                    - children.ru_utime - children.ru_stime)}
            with contextlib.suppress(OSError, ValueError):
                res["requests"] = json.loads(counts.read_text())
        res["engine_cpu_s"] = cpu_delta(server.cpu_s(), engine_cpu)
        if proxy:
            res["proxy"] = proxy.stats(res["wall_s"])
        res["table"] = table_digest(client, table)
        res["engine_rss_mb"] = server.rss_mb()
        if expect:
            res["items"] = expect
            res["items_per_s"] = expect / res["wall_s"]
        summary = summarize_report(report)
        res["report"] = summary
        if isinstance(summary, dict) and isinstance(summary.get("capacity"), dict):
            res["capacity"] = summary["capacity"]
        if res["returncode"] != 0:
            res["error"] = tail(log)
        elif expect is not None and res["table"]["items"] != expect:
            res["error"] = f"table holds {res['table']['items']} items, expected {expect}"
        return res


class ToolFailed(Exception):
    pass


def summarize_report(path: Path) -> Any:
    """The tool's --report, or its top-level scalars (and capacity) if it is large."""
    try:
        text = path.read_text()
    except OSError:
        return None
    try:
        data = json.loads(text)
    except ValueError:
        return {"unparsable": text[:200]}
    if len(text) > 20_000 and isinstance(data, dict):
        return {k: v for k, v in data.items()
                if not isinstance(v, (dict, list)) or k in ("capacity", "images", "items")}
    return data


def cpu_delta(after: float | None, before: float | None) -> float | None:
    return None if after is None or before is None else after - before


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def startup_times(py: str, tool: Path, repeats: int) -> dict[str, Any]:
    imports, tool_version = [], []
    for _ in range(max(3, repeats)):
        t0 = time.perf_counter()
        subprocess.run([py, "-c", "import boto3, tqdm"], check=True, env=fake_env())
        imports.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        rc = subprocess.run([py, str(tool), "--version"], env=fake_env(), cwd=REPO, check=False,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode
        if rc == 0:
            tool_version.append(time.perf_counter() - t0)
    return {"python_import_boto3_tqdm_s": median(imports),
            "tool_version_s": median(tool_version)}


def per_item(capacity: dict[str, Any] | None, items: int | None) -> dict[str, float] | None:
    if not capacity or not items:
        return None
    return {"write_units": capacity.get("write_units", 0) / items,
            "read_units": capacity.get("read_units", 0) / items}


# --- main ----------------------------------------------------------------------------------------

def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    os.environ.update(FAKE_AWS_ENV)
    for key in DROP_ENV:
        os.environ.pop(key, None)
    bench = Bench(args, work)
    res: dict[str, Any] = {
        "params": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "python": sys.version.split()[0], "cpus": os.cpu_count(),
        "load_average_start": os.getloadavg(), "errors": [],
    }
    export = work / "export"
    t0 = time.perf_counter()
    gen = generate_export(export, args.images, args.seed, size=args.size)
    res["generate"] = {**gen, "size": args.size, "wall_s": time.perf_counter() - t0}
    print(f"generated {gen['images']} {args.size} images ({gen['entities']} entities) "
          f"in {res['generate']['wall_s']:.1f}s", file=sys.stderr)

    res["startup"] = startup_times(bench.py, bench.tool, args.repeats)

    # Dry run: conversion throughput, and the items the floor writes.
    dump = work / "items.jsonl"
    dry: list[dict[str, Any]] = []
    items: list[dict[str, Any]] = []
    try:
        for _ in range(args.repeats):
            dry.append(bench.dry_run(export))
        bench.dump_items(export, dump)
        items = load_items(dump)
    except ToolFailed as exc:
        res["errors"].append(str(exc))
        print(f"tool dry run failed, floor uses no items:\n{exc}", file=sys.stderr)
    res["dry_run"] = {"runs": dry,
                      "median_wall_s": median([d["wall_s"] for d in dry]),
                      "median_items_per_s": median([d["items_per_s"] for d in dry]),
                      "items": len(items)}
    n_items = len(items) or None
    bench.warmup = items[:WARMUP_ITEMS]

    # One entry per engine (per engine and thread count with several --threads or a delay),
    # their pairs interleaved: pair 1 of each, then pair 2 of each, ...
    res["engines"] = {}
    for setup in setups(args):
        res["engines"][setup.label] = {"engine": setup.engine, "threads": setup.threads,
                                       "delay_ms": setup.delay_ms, "pairs": []}
    for r in range(args.repeats):
        for setup in setups(args):
            pair = measure_pair(bench, setup, r, export, items, n_items)
            res["engines"][setup.label]["pairs"].append(pair)
            for side in ("floor", "tool"):
                if "error" in pair.get(side, {}):
                    res["errors"].append(f"{setup.label} {side} run {r}: {pair[side]['error']}")
    for data in res["engines"].values():
        data["summary"] = summarize(data["pairs"], n_items)
    res["load_average_end"] = os.getloadavg()

    d_ips = res["dry_run"]["median_items_per_s"]
    for data in res["engines"].values():
        f_ips = data["summary"]["floor_median_items_per_s"]
        data["summary"]["dry_over_floor_items_per_s"] = d_ips / f_ips if f_ips and d_ips else None

    if not args.skip_memory:
        res["memory"] = memory(bench, args, work)
        res["errors"] += res["memory"]["errors"]
    return res


def measure_pair(bench: Bench, setup: Setup, r: int, export: Path,
                 items: list[dict[str, Any]], n_items: int | None) -> dict[str, Any]:
    """The floor and the tool on fresh processes of one engine, one right after the other;
    which goes first alternates from pair to pair."""
    pair: dict[str, Any] = {}
    order = ("floor", "tool") if r % 2 == 0 else ("tool", "floor")
    for side in order:
        if side == "floor" and items:
            pair["floor"] = bench.floor(setup, f"bench-floor-{r}", items)
            print(f"[{setup.label} {r + 1}] floor {pair['floor']['wall_s']:.2f}s "
                  f"{pair['floor']['requests']}", file=sys.stderr)
        elif side == "tool":
            pair["tool"] = bench.live_run(setup, export, f"bench-tool-{r}", n_items)
            print(f"[{setup.label} {r + 1}] tool  {pair['tool']['wall_s']:.2f}s "
                  f"rc={pair['tool']['returncode']} {pair['tool'].get('requests')}",
                  file=sys.stderr)
    fl: dict[str, Any] | None = pair.get("floor")
    tl = pair["tool"]
    if fl and tl.get("items_per_s") and tl["returncode"] == 0:
        pair["ratio_tool_over_floor"] = tl["items_per_s"] / fl["items_per_s"]
        pair["same_table"] = tl["table"] == fl["table"]
        if not pair["same_table"]:
            tl.setdefault("error", f"the tool's table {tl['table']} differs from the floor's "
                                   f"{fl['table']}")
    return pair


def summarize(pairs: list[dict[str, Any]], n_items: int | None) -> dict[str, Any]:
    floors = [p["floor"] for p in pairs if "floor" in p]
    tools = [p["tool"] for p in pairs if p["tool"]["returncode"] == 0]
    ratios = [p["ratio_tool_over_floor"] for p in pairs if "ratio_tool_over_floor" in p]
    out: dict[str, Any] = {
        "items": n_items,
        "floor_median_wall_s": median([f["wall_s"] for f in floors]),
        "floor_median_items_per_s": median([f["items_per_s"] for f in floors]),
        "tool_median_wall_s": median([t["wall_s"] for t in tools]),
        "tool_median_items_per_s": median([t["items_per_s"] for t in tools
                                           if t.get("items_per_s")]),
        "ratio_per_pair": [p.get("ratio_tool_over_floor") for p in pairs],
        "ratio_median": median(ratios),
        "same_table_every_pair": all(p.get("same_table") for p in pairs),
        # requests and capacity do not depend on timing (resends aside): the last pair's
        "floor_requests": floors[-1]["requests"] if floors else None,
        "tool_requests": tools[-1].get("requests") if tools else None,
        "floor_capacity_per_item": per_item(floors[-1]["capacity"], n_items) if floors else None,
        "tool_capacity_per_item": per_item(tools[-1].get("capacity"), n_items) if tools else None,
    }
    f_ips, t_ips = out["floor_median_items_per_s"], out["tool_median_items_per_s"]
    out["ratio_of_medians"] = t_ips / f_ips if f_ips and t_ips else None
    # Through the delay proxy: what it counted (by X-Amz-Target), and how many requests
    # each side kept in flight on average (T at most: the rest is time with idle threads).
    if any("proxy" in f for f in floors) or any("proxy" in t for t in tools):
        out["floor_proxy_requests"] = floors[-1].get("proxy", {}).get("requests") if floors else None
        out["tool_proxy_requests"] = tools[-1].get("proxy", {}).get("requests") if tools else None
        for side, runs in (("floor", floors), ("tool", tools)):
            out[f"{side}_median_mean_in_flight"] = median(
                [r["proxy"]["mean_in_flight"] for r in runs
                 if r.get("proxy", {}).get("mean_in_flight") is not None])
    return out


MOTO_KB_PER_ITEM = 13  # moto's resident memory per stored item (measured, with 5 GSIs)


def mem_available_mb() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def clone_export(src: Path, dst: Path, copies: int) -> dict[str, Any]:
    """``copies`` copies of every image of ``src`` under new (deterministic) UUIDs: the same
    images, so only the size of the export grows, not the size of its largest image."""
    dst.mkdir(parents=True, exist_ok=True)
    images = entities = 0
    for path in sorted(src.glob("*.json")):
        text = path.read_text(encoding="utf-8")
        data = json.loads(text)
        for copy in range(copies):
            new_id = str(uuid.uuid5(uuid.UUID(path.stem), str(copy)))
            (dst / f"{new_id}.json").write_text(text.replace(path.stem, new_id), encoding="utf-8")
            images += 1
            entities += sum(len(v) for v in data.values())
    return {"images": images, "entities": entities}


def memory(bench: Bench, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Peak RSS of dry and live runs: --memory-images M images vs the same images cloned
    big-factor times (so the biggest image is the same and only the export grows)."""
    exports: dict[str, tuple[Path, dict[str, Any]]] = {}
    out: dict[str, Any] = {"errors": []}
    for size in ("small", "big"):
        path = work / f"export-mem-{size}"
        t0 = time.perf_counter()
        if size == "small":
            gen = generate_export(path, args.memory_images, args.seed)
        else:
            gen = clone_export(exports["small"][0], path, args.big_factor)
        exports[size] = (path, gen)
        # One item per entity (the dry run's --dump-items has exactly that many lines).
        out[f"{size}_images"], out[f"{size}_items"] = gen["images"], gen["entities"]
        print(f"generated {size} memory export: {gen['images']} images, {gen['entities']} "
              f"items in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
    for size, (path, _) in exports.items():
        out[f"dry_{size}"] = run_peak_rss(bench.dry_cmd(path), bench.log(f"rss-dry-{size}"))
        print(f"rss dry {size}: {fmt(out[f'dry_{size}']['peak_rss_mb'], '.0f')} MB "
              f"({out[f'dry_{size}']['wall_s']:.1f}s)", file=sys.stderr)
    for size, (path, gen) in exports.items():
        n_items = gen["entities"]
        need_mb = n_items * MOTO_KB_PER_ITEM / 1024
        avail = mem_available_mb()
        if n_items > args.big_live_max_items:
            out[f"live_{size}"] = {"skipped": f"{n_items} items > --big-live-max-items "
                                              f"{args.big_live_max_items}"}
        elif avail is not None and need_mb > 0.85 * avail:
            out[f"live_{size}"] = {"skipped": f"moto would need ~{need_mb:,.0f} MB, "
                                              f"{avail:,.0f} MB available"}
        else:
            out[f"live_{size}"] = bench.live_run(Setup("moto", args.threads[0], 0, "moto"), path,
                                                 f"bench-rss-{size}", n_items, rss=True)
        live = out[f"live_{size}"]
        if "skipped" in live:
            print(f"rss live {size}: skipped ({live['skipped']})", file=sys.stderr)
            continue
        if "error" in live:
            out["errors"].append(f"live memory run {size}: {live['error']}")
        print(f"rss live {size}: {fmt(live.get('peak_rss_mb'), '.0f')} MB, moto "
              f"{fmt(live.get('engine_rss_mb'), '.0f')} MB ({live['wall_s']:.1f}s, "
              f"{fmt(live.get('items_per_s'), ',.0f')} items/s, rc={live['returncode']})",
              file=sys.stderr)
    for kind in ("dry", "live"):
        s, b = out.get(f"{kind}_small", {}), out.get(f"{kind}_big", {})
        if s.get("peak_rss_mb") and b.get("peak_rss_mb"):
            out[f"{kind}_ratio_big_over_small"] = b["peak_rss_mb"] / s["peak_rss_mb"]
    for path, _ in exports.values():
        shutil.rmtree(path, ignore_errors=True)
    return out


def fmt(v: Any, spec: str = ".2f") -> str:
    return "-" if v is None else format(v, spec)


def requests_text(requests: dict[str, int] | None) -> str:
    if not requests:
        return "-"
    return ", ".join(f"{n:,} {op}" for op, n in sorted(requests.items(), key=lambda kv: -kv[1]))


def capacity_text(cap: dict[str, float] | None) -> str:
    if not cap:
        return "-"
    return f"{cap['write_units']:.2f} write + {cap['read_units']:.2f} read units/item"


def print_table(res: dict[str, Any]) -> None:
    p = res["params"]
    rows: list[tuple[str, str]] = [
        ("export", (f"{res['generate']['images']} {res['generate']['size']} images, "
                   f"{res['generate']['entities']} entities")),
        ("threads / repeats", f"{', '.join(map(str, p['threads']))} / {p['repeats']}"),
        *([("delay per request", f"{p['delay_ms']:g} ms (a proxy in front of the engine)")]
          if p.get("delay_ms") else []),
        ("machine", (f"{res['cpus']} cpus, load average {res['load_average_start'][0]:.1f} at "
                    f"start, {fmt(res.get('load_average_end', [None])[0], '.1f')} at end")),
        ("python startup (import boto3, tqdm)",
         f"{fmt(res['startup']['python_import_boto3_tqdm_s'], '.3f')} s"),
        ("dry run", (f"{fmt(res['dry_run']['median_wall_s'])} s, "
                    f"{fmt(res['dry_run']['median_items_per_s'], ',.0f')} items/s "
                    f"({res['dry_run']['items']} items)")),
    ]
    for engine, data in res.get("engines", {}).items():
        s = data["summary"]
        rows.append((f"[{engine}]", ""))
        for i, pair in enumerate(data["pairs"], 1):
            fl, tl = pair.get("floor", {}), pair["tool"]
            first = "floor first" if i % 2 else "tool first"
            rows.append((f"  pair {i} ({first})",
                         (f"floor {fmt(fl.get('wall_s'))} s {fmt(fl.get('items_per_s'), ',.0f')}/s"
                          f" | tool {fmt(tl.get('wall_s'))} s {fmt(tl.get('items_per_s'), ',.0f')}/s"
                          f" rc={tl['returncode']} | ratio "
                          f"{fmt(pair.get('ratio_tool_over_floor'), '.3f')}")))
            rows.append(("    cpu s engine / client",
                         (f"floor {fmt(fl.get('engine_cpu_s'), '.1f')} / "
                          f"{fmt(fl.get('client_cpu_s'), '.1f')} | tool "
                          f"{fmt(tl.get('engine_cpu_s'), '.1f')} / "
                          f"{fmt(tl.get('client_cpu_s'), '.1f')}")))
            if "proxy" in fl or "proxy" in tl:
                fp, tp = fl.get("proxy", {}), tl.get("proxy", {})
                rows.append(("    in flight mean / max, ms per request",
                             (f"floor {fmt(fp.get('mean_in_flight'), '.1f')} / "
                              f"{fmt(fp.get('max_in_flight'), 'd')}, "
                              f"{fmt(fp.get('mean_request_ms'), '.0f')} ms | tool "
                              f"{fmt(tp.get('mean_in_flight'), '.1f')} / "
                              f"{fmt(tp.get('max_in_flight'), 'd')}, "
                              f"{fmt(tp.get('mean_request_ms'), '.0f')} ms")))
        rows += [
            ("  tool/floor items/s", (f"median of pairs {fmt(s['ratio_median'], '.3f')}, "
                                     f"of medians {fmt(s['ratio_of_medians'], '.3f')}")),
            ("  same table (items, sha256)", "yes" if s["same_table_every_pair"] else "NO"),
            ("  floor requests", requests_text(s["floor_requests"])),
            ("  tool requests", requests_text(s["tool_requests"])),
        ]
        if "tool_proxy_requests" in s:
            f_n = sum((s["floor_proxy_requests"] or {}).values())
            t_n = sum((s["tool_proxy_requests"] or {}).values())
            rows += [
                ("  floor requests at the proxy", requests_text(s["floor_proxy_requests"])),
                ("  tool requests at the proxy", requests_text(s["tool_proxy_requests"])),
                ("  round trips tool / floor", (f"{t_n:,} / {f_n:,}"
                                                + (f" = {t_n / f_n:.3f}" if f_n else ""))),
                ("  in flight, median of mean",
                 (f"floor {fmt(s['floor_median_mean_in_flight'], '.2f')} | tool "
                  f"{fmt(s['tool_median_mean_in_flight'], '.2f')} (of {data['threads']} threads)")),
            ]
        rows += [
            ("  floor capacity", capacity_text(s["floor_capacity_per_item"])),
            ("  tool capacity", capacity_text(s["tool_capacity_per_item"])),
            ("  dry run/floor items/s", fmt(s["dry_over_floor_items_per_s"], ".2f")),
        ]
    mem = res.get("memory")
    if mem:
        rows.append(("memory exports", (f"small {mem['small_images']} images "
                                        f"({mem['small_items']:,} items), big "
                                        f"{mem['big_images']} images ({mem['big_items']:,} items)")))
        for kind in ("dry", "live"):
            sizes = []
            for size in ("small", "big"):
                r = mem.get(f"{kind}_{size}", {})
                txt = (f"skipped: {r['skipped']}" if "skipped" in r
                       else f"{fmt(r.get('peak_rss_mb'), '.0f')} MB")
                sizes.append(txt)
            rows.append((f"peak RSS {kind} run small / big",
                         (f"{sizes[0]} / {sizes[1]}, ratio "
                          f"{fmt(mem.get(f'{kind}_ratio_big_over_small'), '.2f')}")))
    width = max(len(k) for k, _ in rows)
    print()
    for k, v in rows:
        print(f"{k:<{width}}  {v}".rstrip())
    for err in res["errors"]:
        print(f"\nERROR: {err}")


def thread_counts(text: str) -> list[int]:
    try:
        values = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of integers: {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError("no thread count given")
    return values


def interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--images", type=int, default=100, help="images in the export (default 100)")
    p.add_argument("--threads", type=thread_counts, default=[10], metavar="T[,T...]",
                   help="writer threads / --max-workers (default 10); several, comma-separated "
                        "(e.g. 4,10), measure each, their pairs interleaved")
    p.add_argument("--delay-ms", type=float, default=0.0, metavar="MS",
                   help="put a proxy (delay_proxy.py) in front of each engine that holds every "
                        "request MS milliseconds before forwarding it, for both the floor and "
                        "the tool: a round trip to AWS from a laptop (default 0: no proxy)")
    p.add_argument("--repeats", type=int, default=3, help="floor/tool pairs (default 3)")
    p.add_argument("--seed", type=int, default=0, help="export seed (default 0)")
    p.add_argument("--size", choices=("small", "full"), default="small",
                   help="images of ~110 items like the golden exports (default) or ~2,700 "
                        "(letters of every word; see gen_export.py)")
    p.add_argument("--engines", default=",".join(ENGINES),
                   help=f"comma-separated, of {', '.join(ENGINES)} (default both)")
    p.add_argument("--json", type=Path, metavar="FILE", help="write the results here")
    p.add_argument("--memory-images", type=int, default=10, metavar="M",
                   help="images in the memory runs' small export (default 10, ~27k items)")
    p.add_argument("--big-factor", type=int, default=20,
                   help="the memory runs' big export has this many times the images "
                        "(default 20: 200 images, ~545k items)")
    p.add_argument("--big-live-max-items", type=int, default=1_000_000, metavar="N",
                   help="skip a live memory run above N items: moto keeps ~13 KB per item in "
                        "memory and writes ~2k items/s; it is also skipped when that would "
                        "exceed 85%% of MemAvailable (default 1,000,000)")
    p.add_argument("--skip-memory", action="store_true", help="skip the peak-RSS runs")
    p.add_argument("--tool", type=Path, default=DEFAULT_TOOL, help=argparse.SUPPRESS)
    p.add_argument("--keep", action="store_true", help="keep the work directory (logs, export)")
    args = p.parse_args(argv)
    args.engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    if not args.engines or set(args.engines) - set(ENGINES):
        p.error(f"--engines: choose from {', '.join(ENGINES)}")
    if "ddblocal" in args.engines and ddblocal_missing():
        p.error(f"--engines ddblocal: {ddblocal_missing()}")
    if args.delay_ms < 0:
        p.error("--delay-ms must be >= 0")
    if min(args.images, *args.threads, args.repeats, args.big_factor, args.memory_images) < 1:
        p.error("--images, --threads, --repeats, --memory-images and --big-factor must be >= 1")

    # SIGTERM (e.g. from `timeout`) unwinds like Ctrl-C, so every engine process is stopped.
    signal.signal(signal.SIGTERM, interrupt)
    work = Path(tempfile.mkdtemp(prefix="bench_copy_"))
    try:
        res = run(args, work)
    finally:
        if args.keep:
            print(f"work directory kept: {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    print_table(res)
    if args.json:
        args.json.write_text(json.dumps(res, indent=2, default=str) + "\n")
    return 1 if res["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
