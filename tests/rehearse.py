"""A dress rehearsal of the migration on this machine: prod's shape, local, in the background.

    .venv/bin/python tests/rehearse.py start [--dir DIR] [--export-dir dev.export]
    . ./rehearsal.env
    ... the README's commands, as written ...
    .venv/bin/python tests/rehearse.py state failing-workflow|dead-letter|stale-prod|healthy
    .venv/bin/python tests/rehearse.py stop [--dir DIR]

``start`` starts, detached (they outlive the command), and reached at 127.0.0.1 only:

* DynamoDB (DynamoDB Local, AWS's engine, where Java and ``.ddblocal`` are there, else moto) with
  the prod and the dev table laid out as the receipt system's (``servers.table_definition``:
  PK/SK, GSI1-GSI4, GSITYPE, a stream); the dev table holds the export's items as the tool builds
  them with the dev stack's own bucket names and embedding states (identity rules);
* a moto server executing Step Functions, with SQS and S3: the dev and prod raw/CDN buckets (an
  object in the dev buckets for every key the export references), the migration notes' two
  workflows and the receipt system's four (``line-submit-sf-prod-<suffix>``, ...), the compaction
  queues and their dead-letter queues;
* a pipeline player (``pipeline.Player``): every workflow is a callback machine whose task token
  the player answers as the embedding pipeline would (submit claims the kind's ``NONE`` rows,
  ``PENDING``; ingest sets the claimed rows ``SUCCESS``; the migration notes' workflows do both),
  so waves and rounds end.

It writes ``dev.json``/``prod.json`` (as ``pulumi stack output --json`` prints them) and
``rehearsal.env`` (the endpoints of every service, fake credentials, the region) into DIR
(default: the current directory), the pid file and the logs into ``DIR/.rehearsal/``. ``stop``
ends exactly the processes of that pid file; the engines keep everything in memory, so their data
goes with them. Ports: ``--dynamodb-port`` (default 8000, or ``$REHEARSAL_DYNAMODB_PORT``) and
``--moto-port`` (8001, ``$REHEARSAL_MOTO_PORT``); 0 picks a free one.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

TESTS_DIR = Path(__file__).resolve().parent
for _p in (str(TESTS_DIR), str(TESTS_DIR.parent)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

from conftest import TableHandle  # noqa: E402
from items import put_items  # noqa: E402
from pipeline import ROLES, Player, kind_of, output_key, step_of  # noqa: E402
from servers import (  # noqa: E402
    DUMMY_KEY_ID,
    DUMMY_SECRET,
    EMBEDDING_ROLE,
    README_MACHINES,
    REGION,
    answers_http,
    create_table,
    ddblocal_command,
    ddblocal_dir,
    ddblocal_unavailable_reason,
    free_port,
    make_client,
    make_service_client,
)
from waiting import wait_for  # noqa: E402
from waves import FAIL_DEFINITION, callback_definition, enable_sfn_execution, moto_server_command  # noqa: E402

import copy_dynamodb_dev_to_prod as tool  # noqa: E402

STATE_DIR = ".rehearsal"
PID_FILE = "rehearsal.pid"
STATE_FILE = "state.json"
ENV_FILE = "rehearsal.env"
DEV_TABLE = "ReceiptsTable-dev-3f1c2a7"
PROD_TABLE = "ReceiptsTable-prod-8b4e9d1"
PROD_RAW_BUCKET, PROD_CDN_BUCKET = "prod-raw-bucket", "prod-cdn-bucket"
DEFAULT_DEV_BUCKETS = {"raw": "dev-raw-bucket", "cdn": "dev-cdn-bucket"}
#: The compaction queues the README's wave recipe gates on: live queues, then dead-letter ones.
LIVE_QUEUES = ("lines-compaction-queue", "words-compaction-queue")
DEAD_LETTER_QUEUES = ("lines-compaction-dlq", "words-compaction-dlq")
#: The migration notes' workflows: one callback machine per kind that claims and embeds.
NOTES_ROLES = {"line-workflow": README_MACHINES[0], "word-workflow": README_MACHINES[1]}
STATES = ("failing-workflow", "dead-letter", "stale-prod", "healthy")


class RehearsalError(Exception):
    """Said in one line, exit 1."""


# --------------------------------------------------------------------------- processes


def state_dir(root: Path) -> Path:
    return root / STATE_DIR


def cmdline(pid: int) -> list[str] | None:
    """The command line of a live process (None: gone, or a zombie)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        if stat.rsplit(")", 1)[1].split()[0] == "Z":
            return None
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")[:-1]
    except OSError:
        if not Path("/proc").is_dir():  # no procfs: ask the kernel whether the pid exists
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return None
            except PermissionError:
                pass
            return []
        return None


def ours(entry: dict[str, Any]) -> bool:
    """Whether the pid file's process still runs, and is still the one we started (a pid may be
    reused by another program after ours ended)."""
    found = cmdline(int(entry["pid"]))
    return found is not None and (found == [] or found == entry["command"])


def read_pid_file(root: Path) -> list[dict[str, Any]] | None:
    path = state_dir(root) / PID_FILE
    try:
        data: list[dict[str, Any]] = json.loads(path.read_text(encoding="utf-8"))["processes"]
    except FileNotFoundError:
        return None
    return data


def write_pid_file(root: Path, processes: list[dict[str, Any]]) -> None:
    path = state_dir(root) / PID_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"processes": processes}, indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)


def spawn(root: Path, processes: list[dict[str, Any]], name: str, command: list[str], log: str,
          cwd: Path | None = None, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """Start ``command`` detached (its own session, stdin closed, output to the log), and record
    it in the pid file at once, so that ``stop`` finds it whatever happens next."""
    with open(state_dir(root) / log, "ab") as out:
        proc = subprocess.Popen(command, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True, close_fds=True)
    processes.append({"name": name, "pid": proc.pid, "command": command, "log": str(state_dir(root) / log)})
    write_pid_file(root, processes)
    return proc


def stop_processes(processes: Sequence[dict[str, Any]]) -> list[str]:
    """SIGTERM each live process of ours (then SIGKILL after 10 s); what was stopped."""
    stopped = []
    for entry in reversed(processes):  # the player first, the engines last
        if not ours(entry):
            continue
        pid = int(entry["pid"])
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            continue
        try:
            wait_for(lambda: not ours(entry), timeout=10, interval=0.1, what=f"{entry['name']} to end")
        except TimeoutError:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            wait_for(lambda: not ours(entry), timeout=10, interval=0.1, what=f"{entry['name']} to be killed")
        stopped.append(f"{entry['name']} (pid {pid})")
    return stopped


def port_taken(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:  # someone on 0.0.0.0 too
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def wait_serving(proc: subprocess.Popen[bytes], url: str, what: str, log: Path) -> None:
    def exited() -> str | None:
        return None if proc.poll() is None else f"{what} exited with code {proc.returncode} (log: {log})"

    wait_for(lambda: answers_http(url, timeout=0.5), timeout=60, interval=0.1,
             what=f"{what} to answer at {url} (log: {log})", give_up=exited)


# --------------------------------------------------------------------------- the export


def export_files(export_dir: Path) -> list[Path]:
    files = tool.list_export_files(export_dir)
    if not files:
        raise RehearsalError(f"{export_dir}: no export files (*.json) there")
    return files


def dev_buckets(files: Sequence[Path]) -> dict[str, str]:
    """The dev stack's bucket names: the ones the export's images name most."""
    seen: dict[str, Counter[str]] = {"raw": Counter(), "cdn": Counter()}
    for path in files:
        for image in tool.read_export_file(path).get("images", []):
            for kind in seen:
                if isinstance(image.get(f"{kind}_s3_bucket"), str):
                    seen[kind][image[f"{kind}_s3_bucket"]] += 1
    return {kind: c.most_common(1)[0][0] if c else DEFAULT_DEV_BUCKETS[kind] for kind, c in seen.items()}


def dev_items_and_objects(files: Sequence[Path], buckets: dict[str, str]) -> tuple[list[Any], set[Any]]:
    """The export's items as the dev table holds them (the tool's conversion with identity rules:
    dev's bucket names and embedding states kept), and the S3 objects they reference
    (``referenced_objects`` with dev -> prod rules)."""
    identity = tool.Rules({}, {}, reset_embeddings=False)
    to_prod = tool.Rules({buckets["raw"]: PROD_RAW_BUCKET}, {buckets["cdn"]: PROD_CDN_BUCKET})
    items: list[Any] = []
    objects: set[Any] = set()
    for path in files:
        source = tool.ImageSource.from_file(path)
        try:
            items += tool.convert_image(source, source.read(), identity, ignore_unknown=True).items
            objects |= set(tool.convert_image(source, source.read(), to_prod, ignore_unknown=True).objects)
        except (tool.InputError, OSError) as exc:
            raise RehearsalError(f"{path}: {exc}") from None
    return items, objects


# --------------------------------------------------------------------------- start


def start(args: argparse.Namespace) -> int:
    root = Path(args.dir).resolve()
    export_dir = Path(args.export_dir)
    if not export_dir.is_absolute():
        export_dir = (root / export_dir) if (root / export_dir).is_dir() else export_dir.resolve()
    running = [p for p in read_pid_file(root) or [] if ours(p)]
    if running:
        what = ", ".join(f"{p['name']} pid {p['pid']}" for p in running)
        raise RehearsalError(
            f"a rehearsal is already running ({what}; "
            f"pid file {state_dir(root) / PID_FILE}): stop it with `{stop_command(args.dir)}`")
    engine = args.engine
    if engine == "auto":
        engine = "moto" if ddblocal_unavailable_reason() else "ddblocal"
    elif engine == "ddblocal" and (reason := ddblocal_unavailable_reason()):
        raise RehearsalError(reason)
    ports = {"moto": args.moto_port}
    if engine == "ddblocal":
        ports["DynamoDB Local"] = args.dynamodb_port
    taken = [f"{port} ({what})" for what, port in ports.items() if port and port_taken(port)]
    if taken:
        raise RehearsalError(f"{'port' if len(taken) == 1 else 'ports'} {' and '.join(taken)} on 127.0.0.1 "
                             f"{'is' if len(taken) == 1 else 'are'} "
                             "taken: stop what uses it, "
                             "or choose others with --dynamodb-port/--moto-port (0: any free port)")
    files = export_files(export_dir)
    buckets = dev_buckets(files)
    dev_items, objects = dev_items_and_objects(files, buckets)

    state_dir(root).mkdir(parents=True, exist_ok=True)
    processes: list[dict[str, Any]] = []
    try:
        env = {k: v for k, v in os.environ.items() if not k.upper().startswith(("AWS_", "BOTO"))}
        moto_port = args.moto_port or free_port()
        moto = spawn(root, processes, "moto", moto_server_command(moto_port), "moto.log", env=env)
        moto_url = f"http://127.0.0.1:{moto_port}"
        ddb_url = moto_url
        if engine == "ddblocal":
            ddb_port = args.dynamodb_port or free_port()
            ddb = spawn(root, processes, "DynamoDB Local", ddblocal_command(ddb_port), "dynamodb-local.log",
                        cwd=ddblocal_dir(), env=env)
            ddb_url = f"http://127.0.0.1:{ddb_port}"
            wait_serving(ddb, ddb_url, "DynamoDB Local", state_dir(root) / "dynamodb-local.log")
        wait_serving(moto, f"{moto_url}/moto-api/", "moto", state_dir(root) / "moto.log")
        enable_sfn_execution(moto_url)

        state = build(root, engine, ddb_url, moto_url, buckets, dev_items, objects, args.claim_receipts)
        write_json(state_dir(root) / STATE_FILE, state)
        player = spawn(root, processes, "pipeline player",
                       [sys.executable, str(Path(__file__).resolve()), "_player", "--dir", str(root)],
                       "player.log", env=env)
        wait_for(lambda: (state_dir(root) / "player.ready").exists(), timeout=30, interval=0.1,
                 what="the pipeline player to start",
                 give_up=lambda: None if player.poll() is None else
                 f"it exited with code {player.returncode} (log: {state_dir(root) / 'player.log'})")
    except BaseException as exc:
        stop_processes(processes)
        (state_dir(root) / PID_FILE).unlink(missing_ok=True)
        if isinstance(exc, RehearsalError | KeyboardInterrupt):
            raise
        raise RehearsalError(f"the rehearsal did not start: {str(exc).splitlines()[0]}") from exc

    write_outputs(root, state)
    names = {"ddblocal": "DynamoDB Local", "moto": "moto"}
    print(f"Rehearsal running: DynamoDB ({names[engine]}) at {ddb_url}, Step Functions, SQS and S3 "
          f"(moto) at {moto_url}, the pipeline player answering {len(state['roles'])} workflows.")
    print(f"Dev table {DEV_TABLE}: {len(dev_items):,} items from {export_dir} ({len(files)} images); "
          f"prod table {PROD_TABLE}: empty; {len(objects)} objects in {buckets['raw']}/{buckets['cdn']}.")
    print(f"Wrote {root / 'dev.json'}, {root / 'prod.json'} and {root / ENV_FILE} (load it: . ./{ENV_FILE}).")
    print(f"Logs: {state_dir(root)}/*.log; pid file: {state_dir(root) / PID_FILE}. "
          f"Stop it all with: {stop_command(args.dir)}")
    return 0


def stop_command(directory: str) -> str:
    return ".venv/bin/python tests/rehearse.py stop" + (f" --dir {directory}" if directory != "." else "")


def build(root: Path, engine: str, ddb_url: str, moto_url: str, buckets: dict[str, str],
          dev_items: list[Any], objects: set[Any], claim_receipts: int) -> dict[str, Any]:
    """Tables, buckets and objects, queues, state machines: what the player and the outputs need."""
    ddb = make_client(ddb_url)
    for table in (PROD_TABLE, DEV_TABLE):
        create_table(ddb, table, timeout=60)
    put_items(ddb, DEV_TABLE, dev_items)

    s3 = make_service_client(moto_url, "s3")
    for bucket in (*buckets.values(), PROD_RAW_BUCKET, PROD_CDN_BUCKET):
        s3.create_bucket(Bucket=bucket)
    for ref in sorted(objects, key=str):
        s3.put_object(Bucket=ref.source, Key=ref.key, Body=f"rehearsal object {ref.key}\n".encode(),
                      ContentType="application/octet-stream")

    sqs = make_service_client(moto_url, "sqs")
    sfn = make_service_client(moto_url, "stepfunctions")
    queues = {name: sqs.create_queue(QueueName=name)["QueueUrl"]
              for name in (*LIVE_QUEUES, *DEAD_LETTER_QUEUES)}
    suffix = secrets.token_hex(4)[:7]  # Pulumi's names end in 7 hex digits
    machine_names = {**{role: f"{role}-sf-prod-{suffix}" for role in ROLES}, **NOTES_ROLES}
    roles = {}
    for role, name in machine_names.items():
        queue = sqs.create_queue(QueueName=f"rehearsal-{role}-tokens")["QueueUrl"]
        arn = sfn.create_state_machine(name=name, definition=callback_definition(queue),
                                       roleArn=EMBEDDING_ROLE)["stateMachineArn"]
        roles[role] = {"machine": arn, "name": name, "queue": queue}
    return {"engine": engine, "dynamodb_url": ddb_url, "moto_url": moto_url, "dev_table": DEV_TABLE,
            "prod_table": PROD_TABLE, "dev_buckets": buckets, "roles": roles, "queues": queues,
            "claim_receipts": claim_receipts}


def write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def write_outputs(root: Path, state: dict[str, Any]) -> None:
    """dev.json and prod.json as `pulumi stack output --json` prints them, and the env file."""
    buckets = state["dev_buckets"]
    write_json(root / "dev.json", {"dynamodb_table_name": DEV_TABLE, "raw_bucket_name": buckets["raw"],
                                   "cdn_bucket_name": buckets["cdn"]})
    roles, queues = state["roles"], state["queues"]
    write_json(root / "prod.json", {
        "dynamodb_table_name": PROD_TABLE, "raw_bucket_name": PROD_RAW_BUCKET,
        "cdn_bucket_name": PROD_CDN_BUCKET,
        **{output_key(role): roles[role]["machine"] for role in ROLES},
        **{f"embedding_{role.replace('-', '_')}_arn": roles[role]["machine"] for role in NOTES_ROLES},
        **{f"{name.replace('-', '_')}_url": url for name, url in queues.items()},
    })
    env = {
        "AWS_ENDPOINT_URL_DYNAMODB": state["dynamodb_url"],
        "AWS_ENDPOINT_URL_SFN": state["moto_url"],
        "AWS_ENDPOINT_URL_SQS": state["moto_url"],
        "AWS_ENDPOINT_URL_S3": state["moto_url"],
        "AWS_ACCESS_KEY_ID": DUMMY_KEY_ID,
        "AWS_SECRET_ACCESS_KEY": DUMMY_SECRET,
        "AWS_DEFAULT_REGION": REGION,
        "AWS_REGION": REGION,
    }
    lines = ["# The local rehearsal (tests/rehearse.py): every AWS service on 127.0.0.1, fake credentials.",
             "# Load it with `. ./rehearsal.env`; a new shell (or `unset` of these) goes back to AWS.",
             "unset AWS_PROFILE AWS_SESSION_TOKEN AWS_ENDPOINT_URL AWS_ENDPOINT_URL_STEPFUNCTIONS",
             *(f"export {k}={v}" for k, v in env.items())]
    (root / ENV_FILE).write_text("\n".join(lines) + "\n", encoding="utf-8")


# --------------------------------------------------------------------------- stop


def stop(args: argparse.Namespace) -> int:
    root = Path(args.dir).resolve()
    processes = read_pid_file(root)
    if processes is None:
        print(f"No rehearsal to stop: no pid file at {state_dir(root) / PID_FILE}.")
        return 0
    stopped = stop_processes(processes)
    (state_dir(root) / PID_FILE).unlink(missing_ok=True)
    (state_dir(root) / "player.ready").unlink(missing_ok=True)
    print(f"Stopped {', '.join(stopped)}." if stopped else "Nothing was running any more.")
    print(f"Kept: dev.json, prod.json, {ENV_FILE} and the logs in {state_dir(root)}; the tables, "
          "buckets, queues and workflows were in memory and are gone.")
    return 0


# --------------------------------------------------------------------------- states


def load_state(root: Path) -> dict[str, Any]:
    if not [p for p in read_pid_file(root) or [] if ours(p)]:
        raise RehearsalError(f"no rehearsal is running here (no live process in "
                             f"{state_dir(root) / PID_FILE}): start one with "
                             "`.venv/bin/python tests/rehearse.py start`")
    data: dict[str, Any] = json.loads((state_dir(root) / STATE_FILE).read_text(encoding="utf-8"))
    return data


def set_state(args: argparse.Namespace) -> int:
    """Put the running rehearsal into a state worth practising on (``healthy``: back)."""
    state = load_state(Path(args.dir).resolve())
    sfn = make_service_client(state["moto_url"], "stepfunctions")
    sqs = make_service_client(state["moto_url"], "sqs")
    roles = state["roles"]
    if args.state == "failing-workflow":
        for role in ("word-ingest", "word-workflow"):
            sfn.update_state_machine(stateMachineArn=roles[role]["machine"], definition=FAIL_DEFINITION)
        print(f"{roles['word-ingest']['name']} and {roles['word-workflow']['name']} now fail "
              "(EmbeddingFailed) a second after they start.")
    elif args.state == "dead-letter":
        sqs.send_message(QueueUrl=state["queues"][DEAD_LETTER_QUEUES[1]],
                         MessageBody=json.dumps({"compaction": "words", "error": "rehearsal"}))
        print(f"One message in {DEAD_LETTER_QUEUES[1]}.")
    elif args.state == "stale-prod":
        print(stale_prod(state))
    else:
        for role, entry in roles.items():
            sfn.update_state_machine(stateMachineArn=entry["machine"],
                                     definition=callback_definition(entry["queue"]))
        for name in DEAD_LETTER_QUEUES:
            sqs.purge_queue(QueueUrl=state["queues"][name])
        print("Every workflow answered by the player again; the dead-letter queues emptied.")
    return 0


def stale_prod(state: dict[str, Any]) -> str:
    """Prod holds an older OCR of the dev table's first images: their items as the tool would
    write them, embedded, with every receipt word's text changed and each receipt's last word
    missing (what `--mirror` updates and `--verify` reports)."""
    ddb = make_client(state["dynamodb_url"])
    dev = ddb.scan(TableName=state["dev_table"], FilterExpression="#t = :image",
                   ExpressionAttributeNames={"#t": "TYPE"},
                   ExpressionAttributeValues={":image": {"S": "IMAGE"}})
    buckets = state["dev_buckets"]
    rules = tool.Rules({buckets["raw"]: PROD_RAW_BUCKET}, {buckets["cdn"]: PROD_CDN_BUCKET})
    old: list[Any] = []
    ids: list[str] = []
    for image_id in sorted(i["PK"]["S"][len("IMAGE#"):] for i in dev["Items"]):
        if len(ids) == 2:
            break
        items = [i for page in ddb.get_paginator("query").paginate(
            TableName=state["dev_table"], KeyConditionExpression="PK = :pk",
            ExpressionAttributeValues={":pk": {"S": f"IMAGE#{image_id}"}}) for i in page["Items"]]
        source = tool.ImageSource(image_id, image_id, lambda: tool.ExportImage({}))
        converted = tool.convert_image(source, tool.image_from_items(items), rules, ignore_unknown=True).items
        last_words: dict[str, Any] = {}
        for item in converted:
            if item["TYPE"]["S"] == "RECEIPT_WORD":
                last_words[item["SK"]["S"].split("#LINE#")[0]] = (item["PK"]["S"], item["SK"]["S"])
                item["text"] = {"S": item["text"]["S"] + "~"}
            if item["TYPE"]["S"] in ("RECEIPT_LINE", "RECEIPT_WORD"):
                item["embedding_status"] = {"S": "SUCCESS"}
                item["GSI1PK"] = {"S": "EMBEDDING_STATUS#SUCCESS"}
        if not last_words:
            continue  # no receipt: nothing OCR'd to be older
        ids.append(image_id)
        dropped = set(last_words.values())
        old += [i for i in converted if (i["PK"]["S"], i["SK"]["S"]) not in dropped]
    put_items(ddb, state["prod_table"], old)
    return (f"Prod holds an older OCR of {len(ids)} images ({', '.join(ids)}): every receipt word's text "
            "differs and each receipt's last word is missing.")


# --------------------------------------------------------------------------- the player


class RehearsalPlayer(Player):
    """``pipeline.Player`` as a process of the rehearsal: no sampler; the migration notes'
    workflows claim and embed in one go; an ingest waits (up to 30 s) while a submit of its kind
    runs, as the pipeline's ingest merges what the submits finished, so one round of the four
    workflows (started at once) embeds a wave."""

    def __init__(self, state: dict[str, Any]) -> None:
        self.roles = state["roles"]
        table = TableHandle(name=state["prod_table"], url=state["dynamodb_url"], client=None,
                            server=cast(Any, None))
        super().__init__(table, state["moto_url"], {r: e["queue"] for r, e in self.roles.items()},
                         claim_receipts=int(state["claim_receipts"]), ingest_delay=0.0, sample=False)

    def play(self, role: str) -> int:
        if step_of(role) == "workflow":
            self.submit(kind_of(role))
            return self.ingest(kind_of(role))
        return super().play(role)

    def submit_running(self, kind: str) -> bool:
        arn = self.roles[f"{kind}-submit"]["machine"]
        return bool(self.sfn.list_executions(stateMachineArn=arn, statusFilter="RUNNING")["executions"])

    def _loop(self) -> None:
        try:
            since: dict[str, float] = {}  # task token -> when it came
            while not self.stop.is_set():
                for role, queue in self.queues.items():
                    received = self.sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10)
                    for m in received.get("Messages", []):
                        self.sqs.delete_message(QueueUrl=queue, ReceiptHandle=m["ReceiptHandle"])
                        self.held.append((role, json.loads(m["Body"])["token"]))
                        since[self.held[-1][1]] = time.monotonic()
                        self.tokens += 1
                self.held.sort(key=lambda held: step_of(held[0]) == "ingest")  # submits first
                for role, token in list(self.held):
                    if (step_of(role) == "ingest" and self.submit_running(kind_of(role))
                            and time.monotonic() - since[token] < 30):
                        continue  # its submit has not been answered yet
                    rows = self.play(role)
                    self.actions.append((role, rows))
                    print(f"{time.strftime('%H:%M:%S')} {role}: {rows} rows "
                          f"{'claimed' if step_of(role) == 'submit' else 'embedded'}", flush=True)
                    try:
                        self.sfn.send_task_success(taskToken=token, output="{}")
                    except self.sfn.exceptions.TaskTimedOut:  # the execution was stopped meanwhile
                        pass
                    self.held.remove((role, token))
                    del since[token]
                time.sleep(0.1)
        except BaseException as exc:
            self.error = exc


def player(args: argparse.Namespace) -> int:
    root = Path(args.dir).resolve()
    state = json.loads((state_dir(root) / STATE_FILE).read_text(encoding="utf-8"))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    (state_dir(root) / "player.ready").touch()
    print(f"pipeline player: {', '.join(e['name'] for e in state['roles'].values())}", flush=True)
    while True:
        one = RehearsalPlayer(state)
        while one.thread.is_alive():
            one.thread.join(1)
        print(f"the player stopped on an error, restarting it in 1 s: {one.error!r}", flush=True)
        if one.error is not None:
            traceback.print_exception(one.error)
        threading.Event().wait(1)


# --------------------------------------------------------------------------- the command line


def env_port(name: str, default: int) -> int:
    value = os.environ.get(name)
    return int(value) if value else default


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tests/rehearse.py", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_start = sub.add_parser("start", help="start the rehearsal in the background")
    p_stop = sub.add_parser("stop", help="end the processes `start` started")
    p_state = sub.add_parser("state", help="put the rehearsal into a state worth practising on")
    p_state.add_argument("state", choices=STATES)
    p_player = sub.add_parser("_player")  # the pipeline player's process
    for p in (p_start, p_stop, p_state, p_player):
        p.add_argument("--dir", default=".", help="where dev.json, prod.json, rehearsal.env and "
                                                  ".rehearsal/ are (default: the current directory)")
    p_start.add_argument("--export-dir", default="dev.export", help="the export to load the dev table from")
    p_start.add_argument("--engine", choices=("auto", "ddblocal", "moto"), default="auto",
                         help="DynamoDB's engine (auto: DynamoDB Local where Java and .ddblocal are, "
                              "else moto)")
    p_start.add_argument("--dynamodb-port", type=int, default=env_port("REHEARSAL_DYNAMODB_PORT", 8000))
    p_start.add_argument("--moto-port", type=int, default=env_port("REHEARSAL_MOTO_PORT", 8001))
    p_start.add_argument("--claim-receipts", type=int, default=1_000_000,
                         help="the receipts a submit claims at most (default: all)")
    args = parser.parse_args(argv)
    try:
        return int({"start": start, "stop": stop, "state": set_state, "_player": player}[args.command](args))
    except RehearsalError as exc:
        print(f"rehearse.py {args.command}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
