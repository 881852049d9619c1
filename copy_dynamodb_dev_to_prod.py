#!/usr/bin/env python3
"""Copy receipt-OCR data from a dev export into the prod DynamoDB table.

Reads ``dev.export/<image_id>.json`` (one file per image, written by the
export tool), rebuilds every entity exactly as the receipt system's own data
layer (receipt_dynamo) would store it, applies the migration rules (S3 bucket
names dev -> prod, embedding status reset) and writes the items to prod.

Safe by default: without ``--no-dry-run`` nothing is written, and without
``--table`` nothing is even contacted. A live run writes only items prod does
not hold yet, never overwrites items prod has changed (they are reported as
conflicts), and writes an image's ``IMAGE`` item last, so that its presence
means "this image is complete" and a killed run is finished by the next one.

Sections, in the order data flows:
   1. Errors and exit codes
   2. CLI and settings
   3. Schema and items (attribute codecs, one spec per entity kind, migration rules,
      item building and checks, and the inverse: items back into entities)
   4. AWS requests (clients, the one retry policy, batch writes)
   5. Sources (export files, the dev table, item exports; the selection of images)
   6. The prod table (ProdTable: the only code that reads or writes prod)
   7. Compare with prod (one diff, for the copy and for --verify)
   8. The run plan (RunPlan: what the run does with each image, decided once)
   9. The copier (reads prod's versions, diffs, writes; one outcome per image; the journal)
  10. Workflows and waves (Workflows: the one driver of Step Functions)
  11. Undo (--undo: a journal read back and applied)
  12. Read-only operations (--status, --verify)
  13. Report
  14. Main
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import dataclasses
import datetime as dt
import functools
import gzip
import hashlib
import importlib.util
import itertools
import json
import logging
import math
import os
import random
import re
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import weakref
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from decimal import ROUND_HALF_UP, Context, Decimal, InvalidOperation
from pathlib import Path
from string import Formatter
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar, cast

if TYPE_CHECKING:  # the development requirements' stubs: mypy checks every AWS call
    from mypy_boto3_dynamodb import DynamoDBClient
    from mypy_boto3_stepfunctions import SFNClient

__version__ = "1.1.0"  # 1.1: an image's first item is written first (see Copier)


log = logging.getLogger("copy_dynamodb_dev_to_prod")


# =============================================================================
# 1. Errors and exit codes
# =============================================================================


EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
EXIT_INTERRUPTED, EXIT_TERMINATED = 130, 143  # Ctrl-C, SIGTERM (128 + the signal's number)


class UsageError(Exception):
    """Bad flags or configuration: exit 2 before anything is done."""


class FatalError(Exception):
    """An operation cannot go on (e.g. a state machine does not exist): exit 1."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (what AWS Batch and CI runners send): stopped like Ctrl-C, exit 143."""


def raise_terminated(signum: int, frame: Any) -> None:
    raise Terminated()


class Stopped(BaseException):
    """Ctrl-C or SIGTERM arrived where the run knows what it leaves behind (executions that
    keep running in AWS, a prompt not answered, a verify half done): `explanation` says so,
    in place of the generic stop message. Like KeyboardInterrupt, no `except Exception`
    swallows it."""

    def __init__(self, explanation: str, terminated: bool = False) -> None:
        super().__init__(explanation)
        self.explanation, self.terminated = explanation, terminated

    @classmethod
    def by(cls, interrupt: KeyboardInterrupt, explanation: str) -> Stopped:
        return cls(explanation, terminated=isinstance(interrupt, Terminated))


def botocore_setup_error(exc: BaseException) -> bool:
    """Missing region, credentials or profile: a configuration problem, not a crash."""
    return type(exc).__name__ in (
        "NoRegionError", "NoCredentialsError", "ProfileNotFound", "PartialCredentialsError",
        "InvalidEndpointURL", "InvalidRegionError", "ConfigParseError", "ConfigNotFound",
        "CredentialRetrievalError", "InvalidConfigError", "SSOTokenLoadError",
        "UnauthorizedSSOTokenError", "TokenRetrievalError", "UnknownCredentialError")


@contextlib.contextmanager
def errors_as(error: type[Exception], what: str, then: str = "") -> Iterator[None]:
    """Any failure in the block becomes one `error` saying `what` failed, why, and `then`
    what to do. The tool's own errors pass as they are, and so do botocore's setup errors
    (no credentials, no region), which main reports as configuration errors (exit 2)."""
    try:
        yield
    except (UsageError, FatalError):
        raise
    except Exception as exc:
        if botocore_setup_error(exc):
            raise
        raise error(f"{what}: {describe_error(exc)}" + (f". {then}" if then else "")) from None


# What to do about botocore's setup errors, whose own words do not say how.
SETUP_HINTS = {
    "NoRegionError": "give --region, set AWS_DEFAULT_REGION, or set region in the AWS profile's "
                     "config (--profile or AWS_PROFILE)",
    "NoCredentialsError": "give --profile (or set AWS_PROFILE), or set AWS_ACCESS_KEY_ID and "
                          "AWS_SECRET_ACCESS_KEY",
}


def describe_error(exc: BaseException) -> str:
    """A one-line reason without request details (which could carry signed headers)."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict) and "Error" in response:
        err = response["Error"]
        return f"{err.get('Code', 'Error')}: {err.get('Message', '')}".strip()
    hint = SETUP_HINTS.get(type(exc).__name__)
    return f"{type(exc).__name__}: {exc}" + (f" ({hint})" if hint else "")


class InputError(Exception):
    """Bad data in one export file: fails that image alone."""

    def __init__(self, message: str, entity: str | None = None,
                 index: int | None = None, field: str | None = None) -> None:
        super().__init__(message)
        self.message, self.entity, self.index, self.field = message, entity, index, field

    def record(self, source: ImageSource) -> dict[str, Any]:
        """The report's error entry (format_error turns it into the one-line message)."""
        return {"file": source.name, "image_id": source.image_id, "entity": self.entity,
                "index": self.index, "field": self.field, "message": self.message}


# =============================================================================
# 2. CLI and settings
# =============================================================================


DEFAULT_LINE_MACHINE = "embedding-infra-prod-line-workflow"


DEFAULT_WORD_MACHINE = "embedding-infra-prod-word-workflow"


DEFAULT_WAVE_TIMEOUT = 6 * 3600  # seconds one wave may wait for the embedding pipeline


DEFAULT_ROUND_INTERVAL = 300.0  # seconds between two rounds of a wave's workflows


# The receipt system's own promotion script waits while a compaction queue is deeper than this.
DEFAULT_MAX_QUEUE_DEPTH = 500


# When a wave is done: its executions ended; none of its rows NONE; none NONE or PENDING.
WAVE_DONE = ("executions", "claimed", "embedded")


# Environment variables read when neither a flag nor a config file names a value.
ENV_VARS = {
    "table": "PROD_DYNAMODB_TABLE_NAME",
    "dev_table": "DEV_DYNAMODB_TABLE_NAME",
    "dev_raw_bucket": "DEV_RAW_BUCKET",
    "prod_raw_bucket": "PROD_RAW_BUCKET",
    "dev_cdn_bucket": "DEV_CDN_BUCKET",
    "prod_cdn_bucket": "PROD_CDN_BUCKET",
}


# Keys of `pulumi stack output --json` that name what this tool needs.
PULUMI_KEYS = {
    "table": "dynamodb_table_name",
    "raw_bucket": "raw_bucket_name",
    "cdn_bucket": "cdn_bucket_name",
}


# Each configurable value: the stage whose stack outputs name it, and the output it is.
STACK_VALUES = {
    "table": ("prod", "table"),
    "dev_table": ("dev", "table"),
    "dev_raw_bucket": ("dev", "raw_bucket"),
    "prod_raw_bucket": ("prod", "raw_bucket"),
    "dev_cdn_bucket": ("dev", "cdn_bucket"),
    "prod_cdn_bucket": ("prod", "cdn_bucket"),
}


RUNTIME_PACKAGES = ("boto3", "tqdm")


HELP_EPILOG = """\
examples (the usual migration; dev.json/prod.json are `pulumi stack output --json`):
  .venv/bin/python %(prog)s --dev-config dev.json --prod-config prod.json
      dry run: what would be copied (asks prod read-only which images it holds)
  .venv/bin/python %(prog)s --no-dry-run --dev-config dev.json --prod-config prod.json \\
      --report copy-report.json
      the copy (asks on a terminal; --yes skips the question)
  .venv/bin/python %(prog)s --verify --dev-config dev.json --prod-config prod.json
      read every exported image back from prod and compare
  .venv/bin/python %(prog)s --status --prod-config prod.json
      receipt lines/words still waiting for embeddings
  .venv/bin/python %(prog)s --trigger-embeddings --no-dry-run --yes
      start the embedding workflows (--workflow, else the line and word ones)
  .venv/bin/python %(prog)s --no-dry-run --dev-config dev.json --prod-config prod.json \\
      --wave-size 100 --report copy-report.json
      a big migration: 100 images, then rounds of the workflows until those images' receipt
      lines and words are embedded, and so on (--workflow, --queue, --dead-letter-queue)
  --dev-stack dev --prod-stack prod (with --pulumi-cwd DIR) instead of the files asks pulumi.

exit codes:
  0    every image copied or skipped; the operations succeeded
  1    an image failed, --verify found missing or different items, or an operation failed
  2    usage or configuration error: bad or abbreviated flag, missing value or config key, table not found
       or unreachable, dev table as target, no confirmation, missing Python package
  130  interrupted with Ctrl-C, 143 stopped with SIGTERM: in-flight batches finish, the report is
       written, and running the same command again finishes the images (stopped at the
       confirmation prompt or in --verify, nothing was written)
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="copy_dynamodb_dev_to_prod.py",
        description="Migrate receipt-OCR data from a dev export into the prod DynamoDB table. "
        "Dry run by default.",
        epilog=HELP_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        # A tool that writes to prod must not guess what a truncated flag meant (--dry could
        # be --dry-run), and --verify's repair command drops flags by their full names.
        allow_abbrev=False,
    )
    src = p.add_argument_group("input")
    src.add_argument("--export-dir", type=Path,
                     help="directory of <image_id>.json export files (default: dev.export)")
    src.add_argument("--include-empty", action="store_true",
                     help="also copy images that have no receipts (skipped by default)")
    src.add_argument("--ignore-unknown", action="store_true",
                     help="skip export lists this tool does not know instead of failing the image")
    src.add_argument("--limit", type=int, metavar="N",
                     help="copy at most N images that are not yet in prod")
    src.add_argument("--shard", metavar="K/N", help="process only shard K of N (K = 0..N-1)")

    other = p.add_argument_group("other sources (instead of --export-dir)")
    other.add_argument("--source-table", metavar="NAME",
                       help="read the images straight from this dev table (read-only: Query and Scan)")
    other.add_argument("--source-region", help="the source table's region (default: --region)")
    other.add_argument("--source-profile", help="the source table's AWS profile (default: --profile)")
    other.add_argument("--source-endpoint-url",
                       help="the source table's endpoint (default: --endpoint-url)")
    other.add_argument("--source-items", type=Path, metavar="PATH",
                       help="read DynamoDB JSON items: a .jsonl/.jsonl.gz file (one item, or "
                            '{"Item": ...}, a line) or a downloaded export-to-S3 folder '
                            "(manifest-summary.json and data/*.json.gz)")
    other.add_argument("--image-id", action="append", metavar="ID",
                       help="only this image (repeatable; with any source; ids match in any "
                            "case)")
    other.add_argument("--image-ids-file", type=Path, metavar="FILE",
                       help="only the images listed in FILE, one id a line")

    cfg = p.add_argument_group(
        "configuration (flags win over config files and stacks, those over environment)")
    cfg.add_argument("--table", help=f"prod table name (env {ENV_VARS['table']})")
    cfg.add_argument("--dev-table", help=f"dev table name, used only to refuse copying into it "
                     f"(env {ENV_VARS['dev_table']})")
    cfg.add_argument("--dev-config", type=Path, metavar="FILE",
                     help="JSON of `pulumi stack output --json` for dev")
    cfg.add_argument("--prod-config", type=Path, metavar="FILE",
                     help="JSON of `pulumi stack output --json` for prod")
    cfg.add_argument("--dev-stack", metavar="NAME",
                     help="read dev's outputs with `pulumi stack output --json --stack NAME`")
    cfg.add_argument("--prod-stack", metavar="NAME",
                     help="read prod's outputs with `pulumi stack output --json --stack NAME`")
    cfg.add_argument("--pulumi-cwd", type=Path, metavar="DIR",
                     help="directory of the Pulumi project for --dev-stack/--prod-stack "
                          "(default: the current directory)")
    for stage in ("dev", "prod"):
        for kind in ("raw", "cdn"):
            cfg.add_argument(f"--{stage}-{kind}-bucket",
                             help=f"{stage} {kind} S3 bucket (env {ENV_VARS[f'{stage}_{kind}_bucket']})")

    aws = p.add_argument_group("AWS connection")
    aws.add_argument("--region", help="AWS region (default: AWS_DEFAULT_REGION, else the "
                     "profile's AWS config; the header and the prompt show which)")
    aws.add_argument("--profile", help="AWS profile name")
    aws.add_argument("--endpoint-url", help="DynamoDB endpoint (e.g. a local moto server; default: "
                     "AWS_ENDPOINT_URL_DYNAMODB, else AWS_ENDPOINT_URL, else AWS)")

    run = p.add_argument_group("run")
    mode = run.add_mutually_exclusive_group()
    mode.add_argument("--dry-run", dest="dry_run", action="store_true", default=True,
                      help="show what would be copied, write nothing (default); without a prod "
                           "table (--table, --prod-config, --prod-stack or PROD_DYNAMODB_TABLE_NAME) "
                           "nothing is contacted, with one prod is only read")
    mode.add_argument("--no-dry-run", dest="dry_run", action="store_false",
                      help="actually copy")
    run.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    run.add_argument("--force", action="store_true",
                     help="allow a target table that is, or looks like, the dev table")
    run.add_argument("--skip-existing", dest="skip_existing", action="store_true", default=None,
                     help="skip images whose IMAGE item is already in prod (default, "
                          "except with --overwrite-changed)")
    run.add_argument("--no-skip-existing", dest="skip_existing", action="store_false",
                     help="re-sync images already in prod: write missing items, report conflicts")
    run.add_argument("--overwrite-changed", action="store_true",
                     help="overwrite prod items that differ from the export (default: keep "
                          "prod's); implies --no-skip-existing, so images already in prod are "
                          "compared too")
    run.add_argument("--max-workers", type=int, default=10, help="parallel requests (default 10)")
    run.add_argument("--max-retries", type=int, default=8,
                     help="every request (batch write, batch read, query) is sent at most 1+N "
                          "times: again after throttling, a 5xx or a dropped connection, and for "
                          "the items or keys the table left unprocessed, each time after "
                          "exponential backoff with full jitter (default 8; 0 sends every request "
                          "once)")
    run.add_argument("--max-items-per-second", type=float, metavar="R",
                     help="cap on items written per second, shared by all workers")
    run.add_argument("--check-partitions", action="store_true",
                     help="for an image whose IMAGE item and first item prod both lack, also Query "
                          "its partition before writing (one request per such image): for a table "
                          "that may hold partial images left by version 1.0, which wrote an image's "
                          "items in any order, or by another writer")

    objects = p.add_argument_group("S3 objects (the raw upload and CDN variants items point to)")
    objects.add_argument("--copy-objects", action="store_true",
                         help="copy every object an image's or receipt's rewritten bucket names "
                              "point to from the dev bucket to the prod bucket (server-side, same "
                              "key, metadata kept), before the image's items; an object prod "
                              "holds with the same size and ETag is not copied again; a dry run "
                              "counts them (HeadObject only)")
    objects.add_argument("--allow-missing-objects", action="store_true",
                         help="with --copy-objects: an object missing in the dev bucket is a warning "
                              "(listed in the report), not a failure of its image")
    objects.add_argument("--s3-endpoint-url",
                         help="S3 endpoint (default: a non-AWS --endpoint-url, else "
                              "AWS_ENDPOINT_URL_S3 or AWS_ENDPOINT_URL, else AWS)")

    mirror = p.add_argument_group(
        "mirror and delete (destructive: opt-in, planned exactly by the dry run, journaled)")
    mirror.add_argument("--mirror", action="store_true",
                        help="make prod's items of the kinds this tool writes exactly the source's "
                             "for every selected image: put new and changed items, delete those the "
                             "source no longer has, leave equal ones (and their embedding status) "
                             "alone; items of other types are never touched (implies "
                             "--no-skip-existing)")
    mirror.add_argument("--delete-missing", action="store_true",
                        help="delete the prod images the source does not have (their items of the "
                             "kinds this tool writes, the IMAGE item last); only with a complete "
                             "source (--source-table, unfiltered) or --delete-image-ids")
    mirror.add_argument("--delete-image-ids", type=Path, metavar="FILE",
                        help="with --delete-missing: delete exactly the images listed in FILE (one "
                             "id a line), none of which the source may have")
    mirror.add_argument("--protect", type=Path, metavar="FILE",
                        help="image ids (one a line) that are never written or deleted, in any "
                             "mode: prod keeps them as it holds them (or lacks them)")
    mirror.add_argument("--journal", type=Path, metavar="FILE",
                        help="where a live run with --mirror, --delete-missing or "
                             "--overwrite-changed records, before each batch, the items it "
                             "overwrites or deletes and the keys it adds (default: next to "
                             "--report, else copy-journal-<time>.jsonl; appended to if it exists)")
    mirror.add_argument("--undo", type=Path, metavar="JOURNAL",
                        help="put prod back as it was before the journaled run: delete what it "
                             "added, restore what it overwrote or deleted; items changed since are "
                             "left alone and reported as conflicts (runs on its own; dry run by "
                             "default)")

    ops = p.add_argument_group("operations that run on their own, instead of a copy (read-only)")
    ops.add_argument("--status", action="store_true",
                     help="count receipt lines/words still waiting for embeddings, for the whole "
                          "table or, with --export-dir, for the export's images")
    ops.add_argument("--verify", action="store_true",
                     help="read every exported image back from prod and compare (needs the "
                          "bucket names, as a live copy does); prints the command that repairs "
                          "what is missing or different")

    emb = p.add_argument_group("embeddings")
    emb.add_argument("--trigger-embeddings", action="store_true",
                     help="start the line and word embedding Step Functions (input {}); alone it "
                          "only triggers, with --export-dir it copies first and triggers only if "
                          "no image failed; a dry run only says what it would start")
    emb.add_argument("--line-state-machine", default=DEFAULT_LINE_MACHINE,
                     help=f"name or ARN (default {DEFAULT_LINE_MACHINE})")
    emb.add_argument("--word-state-machine", default=DEFAULT_WORD_MACHINE,
                     help=f"name or ARN (default {DEFAULT_WORD_MACHINE})")
    emb.add_argument("--sfn-endpoint-url",
                     help="Step Functions endpoint (default: a non-AWS --endpoint-url, e.g. one "
                          "moto server, else AWS_ENDPOINT_URL_SFN, AWS_ENDPOINT_URL_STEPFUNCTIONS "
                          "or AWS_ENDPOINT_URL, else AWS)")
    emb.add_argument("--workflow", action="append", metavar="NAME",
                     help="a workflow to start, repeatable, in start order (instead of the line "
                          "and word state machines): a name, an ARN, a prefix that matches "
                          "exactly one state machine (for Pulumi's suffixes), or output:KEY, the "
                          "prod stack output KEY (--prod-config/--prod-stack)")
    emb.add_argument("--wave-size", type=int, metavar="N",
                     help="copy in waves of N images; after each wave run rounds of the workflows "
                          "until the wave's receipt lines and words are done (--wave-done), then "
                          "the next wave (implies --trigger-embeddings; a dry run prints this "
                          "plan per wave)")
    emb.add_argument("--wave-done", choices=WAVE_DONE, default="embedded",
                     help="with --wave-size: when a wave is done: its workflows' executions ended "
                          "(executions, one round), none of its rows is NONE (claimed), none is "
                          "NONE or PENDING (embedded, default); rows marked is_noise never count")
    emb.add_argument("--round-interval", type=float, metavar="SECONDS",
                     help="with --wave-size: pause between two rounds of one wave (default "
                          f"{DEFAULT_ROUND_INTERVAL:g}, 5 min)")
    emb.add_argument("--max-pending-embeddings", type=int, metavar="M",
                     help="with --wave-size: before each wave also wait until at most M receipt "
                          "lines/words in the whole table are in flight (NONE, not noise, or "
                          "PENDING)")
    emb.add_argument("--wave-timeout", type=float, metavar="SECONDS",
                     help="with --wave-size: longest wait of one wave, its rounds and gates together "
                          f"(default {DEFAULT_WAVE_TIMEOUT}, 6 h); past it exit 1, a re-run continues")
    emb.add_argument("--queue", action="append", metavar="NAME_OR_URL",
                     help="with --wave-size: before each wave and each round wait until this SQS "
                          "queue holds at most --max-queue-depth messages (repeatable)")
    emb.add_argument("--max-queue-depth", type=int, metavar="M",
                     help=f"messages (visible, in flight and delayed) a --queue may hold (default "
                          f"{DEFAULT_MAX_QUEUE_DEPTH})")
    emb.add_argument("--dead-letter-queue", action="append", metavar="NAME_OR_URL",
                     help="with --wave-size: any message in this SQS queue stops the run before its "
                          "next write (repeatable; checked before the first wave too)")
    emb.add_argument("--sqs-endpoint-url",
                     help="SQS endpoint for the queue gates (default: a non-AWS --endpoint-url, "
                          "else AWS_ENDPOINT_URL_SQS or AWS_ENDPOINT_URL, else AWS)")

    out = p.add_argument_group("output")
    out.add_argument("--report", type=Path, metavar="FILE", help="write a JSON report")
    out.add_argument("--dump-items", type=Path, metavar="FILE",
                     help="write every item written (or, in a dry run, to be written) as JSON Lines")
    out.add_argument("--no-progress", action="store_true", help="no progress bars")
    out.add_argument("--verbose", "-v", action="store_true", help="debug logging")
    out.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return p


@dataclasses.dataclass
class ConfigOrigin:
    """Where the configuration came from, for what the tool says (the settings are Config's)."""
    # Where each configured value came from, e.g. "from prod.json: dynamodb_table_name".
    sources: dict[str, str] = dataclasses.field(default_factory=dict)
    # Values a given config file or stack lacks, e.g. "prod.json has no 'dynamodb_table_name'".
    missing: dict[str, str] = dataclasses.field(default_factory=dict)
    argv: list[str] = dataclasses.field(default_factory=list)  # for --verify's repair command

    def of(self, name: str) -> str:
        return self.sources.get(name, "not set")


@dataclasses.dataclass
class Config:
    """The run's settings, merged from flags, stack outputs and the environment."""
    export_dir: Path
    export_dir_given: bool = False
    dry_run: bool = True
    table: str | None = None
    dev_table: str | None = None
    dev_raw_bucket: str | None = None
    prod_raw_bucket: str | None = None
    dev_cdn_bucket: str | None = None
    prod_cdn_bucket: str | None = None
    region: str | None = None
    profile: str | None = None
    endpoint_url: str | None = None
    sfn_endpoint_url: str | None = None
    include_empty: bool = False
    ignore_unknown: bool = False
    skip_existing: bool = True
    overwrite_changed: bool = False
    max_workers: int = 10
    max_retries: int = 8
    max_items_per_second: float | None = None
    check_partitions: bool = False
    limit: int | None = None
    shard: tuple[int, int] | None = None
    yes: bool = False
    force: bool = False
    trigger_embeddings: bool = False
    line_state_machine: str = DEFAULT_LINE_MACHINE
    word_state_machine: str = DEFAULT_WORD_MACHINE
    # The workflows to start, in order: --workflow's values (output:KEY resolved), else the
    # line and word state machines.
    workflows: tuple[str, ...] = (DEFAULT_LINE_MACHINE, DEFAULT_WORD_MACHINE)
    workflows_given: tuple[str, ...] = ()    # as given, e.g. output:KEY (the report shows it)
    wave_size: int | None = None
    wave_done: str = "embedded"
    round_interval: float = DEFAULT_ROUND_INTERVAL
    max_pending_embeddings: int | None = None
    wave_timeout: float = DEFAULT_WAVE_TIMEOUT
    queues: tuple[str, ...] = ()
    dead_letter_queues: tuple[str, ...] = ()
    max_queue_depth: int = DEFAULT_MAX_QUEUE_DEPTH
    sqs_endpoint_url: str | None = None
    copy_objects: bool = False
    allow_missing_objects: bool = False
    s3_endpoint_url: str | None = None
    status: bool = False
    verify: bool = False
    # issue 21: mirror, delete, protect, journal, undo
    mirror: bool = False
    delete_missing: bool = False
    delete_image_ids: tuple[str, ...] | None = None
    protect: frozenset[str] = frozenset()   # lower-cased ids
    journal: Path | None = None
    undo: Path | None = None
    report: Path | None = None
    dump_items: Path | None = None
    progress: bool = True
    verbose: bool = False
    # other sources (issue 12): the dev table or DynamoDB JSON items instead of export files
    source_table: str | None = None
    source_region: str | None = None
    source_profile: str | None = None
    source_endpoint_url: str | None = None
    source_items: Path | None = None
    image_ids: tuple[str, ...] | None = None
    # the files the configuration was read from (outputs must never overwrite them)
    dev_config: Path | None = None
    prod_config: Path | None = None
    image_ids_file: Path | None = None

    @property
    def other_source(self) -> bool:
        return self.source_table is not None or self.source_items is not None

    @property
    def copies(self) -> bool:
        """--status and --verify are read-only operations of their own. --trigger-embeddings
        copies first only when --export-dir is given; alone it only triggers."""
        trigger_only = self.trigger_embeddings and not (self.export_dir_given or self.other_source
                                                        or self.wave_size)
        return not (self.status or self.verify or trigger_only or self.undo)

    @property
    def destructive(self) -> bool:
        """A run that may overwrite or delete prod's items: live, it keeps a journal."""
        return self.copies and (self.mirror or self.delete_missing or self.overwrite_changed)

    @property
    def mode(self) -> str:
        if self.undo:
            return "undo-dry-run" if self.dry_run else "undo"
        if self.status or self.verify:
            return "+".join(m for m, on in (("verify", self.verify), ("status", self.status)) if on)
        return "dry-run" if self.dry_run else "live"

    @property
    def operation(self) -> str:
        """What this run does, as messages name it."""
        if self.undo:
            return "--undo"
        if self.status or self.verify:
            return " and ".join(f"--{m}" for m in self.mode.split("+"))
        if not self.copies:
            return "--trigger-embeddings"
        return "a dry run" if self.dry_run else "a live copy"

    @property
    def reads_table(self) -> bool:
        """The copy (live, or dry with a table), --status and --verify read the prod table."""
        return bool(self.table) and (self.copies or self.status or self.verify or bool(self.undo))

    def needed_values(self) -> set[str]:
        """The configured values this operation uses (each operation asks only for those)."""
        needed = set()
        if self.copies or self.status or self.verify or self.undo:
            needed.add("table")
        if self.copies or self.verify or (self.status and self.copy_objects):
            needed |= {"dev_raw_bucket", "prod_raw_bucket", "dev_cdn_bucket", "prod_cdn_bucket"}
        if self.copies and not self.dry_run:
            needed.add("dev_table")
        return needed


def flag_of(name: str) -> str:
    return "--" + name.replace("_", "-")


def load_pulumi_outputs(path: Path) -> dict[str, Any]:
    """Read the JSON that `pulumi stack output --json` prints."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read config file {path}: {exc}") from None
    return stack_outputs(data, f"config file {path}")


def stack_outputs(data: Any, where: str) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise UsageError(f"{where}: expected a JSON object of stack outputs")
    return data


def stack_value(data: Mapping[str, Any], key: str, where: str) -> str | None:
    """One output naming something. One that is there but no name (a number, null, "") is an
    error of its own: "has no ..." would send the operator looking for a missing key."""
    if key not in data:
        return None
    if not (isinstance(data[key], str) and data[key].strip()):
        raise UsageError(f"{where}: {key!r} is {json.dumps(data[key])}, not a name")
    return str(data[key])


@dataclasses.dataclass
class StageOutputs:
    """A stage's stack outputs (a file or `pulumi stack output`) and how messages name them."""
    data: dict[str, Any] = dataclasses.field(default_factory=dict)
    label: str | None = None    # None: no config file or stack given for this stage
    where: str = ""             # for errors: "config file prod.json", "`pulumi stack output ...`"

    def value(self, key: str) -> str | None:
        return stack_value(self.data, key, self.where)


def read_pulumi_stack(stage: str, stack: str, cwd: Path | None,
                      environ: Mapping[str, str]) -> dict[str, Any]:
    """`pulumi stack output --json --stack NAME`, run without a shell: the receipt system's own
    scripts read their configuration this way, so the operator needs no exported files."""
    pulumi = shutil.which("pulumi", path=environ.get("PATH"))
    if pulumi is None:
        raise UsageError(f"--{stage}-stack needs the pulumi CLI, which is not "
                         "on PATH (or give --dev-config/--prod-config files)")
    command = [pulumi, "stack", "output", "--json", "--stack", stack]
    shown = f"`pulumi stack output --json --stack {stack}`" + (f" in {cwd}" if cwd else "")
    try:
        done = subprocess.run(command, cwd=cwd, env=dict(environ), capture_output=True, text=True,
                              stdin=subprocess.DEVNULL, timeout=120, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise UsageError(f"{shown} could not run: {exc}") from None
    if done.returncode != 0:
        lines = [line.strip() for line in done.stderr.splitlines() if line.strip()]
        reason = lines[-1] if lines else "no message"
        raise UsageError(f"{shown} failed (exit {done.returncode}): {reason}")
    try:
        data = json.loads(done.stdout)
    except ValueError:
        raise UsageError(f"{shown} did not print JSON") from None
    return stack_outputs(data, shown)


def load_stage(args: argparse.Namespace, stage: str, environ: Mapping[str, str]) -> StageOutputs:
    """A stage's outputs and how messages name where they came from (a file or a stack)."""
    path, stack = getattr(args, f"{stage}_config"), getattr(args, f"{stage}_stack")
    if path is not None and stack is not None:
        raise UsageError(f"give --{stage}-config or --{stage}-stack, not both")
    if stack is not None:
        shown = f"`pulumi stack output --json --stack {stack}`" + (
            f" in {args.pulumi_cwd}" if args.pulumi_cwd else "")
        return StageOutputs(read_pulumi_stack(stage, stack, args.pulumi_cwd, environ),
                            f"pulumi stack {stack}", shown)
    if path is not None:
        return StageOutputs(load_pulumi_outputs(path), str(path), f"config file {path}")
    return StageOutputs()


def parse_shard(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    m = re.fullmatch(r"(\d+)/(\d+)", text)
    if not m or not 0 <= int(m[1]) < int(m[2]):
        raise UsageError(f"--shard {text!r}: expected K/N with 0 <= K < N, e.g. 0/4")
    return int(m[1]), int(m[2])


def wave_settings(args: argparse.Namespace) -> dict[str, Any]:
    """--wave-size and its companions; --wave-size implies --trigger-embeddings."""
    if args.wave_size is not None and args.wave_size < 1:
        raise UsageError("--wave-size must be at least 1")
    companions = {"--max-pending-embeddings": args.max_pending_embeddings,
                  "--wave-timeout": args.wave_timeout,
                  "--round-interval": args.round_interval, "--queue": args.queue,
                  "--dead-letter-queue": args.dead_letter_queue, "--max-queue-depth": args.max_queue_depth}
    given = [flag for flag, value in companions.items() if value is not None]
    if args.wave_size is None and not args.undo and (given or args.wave_done != "embedded"):
        given = given or ["--wave-done"]
        raise UsageError(f"{', '.join(given)} go{'es' if len(given) == 1 else ''} with --wave-size")
    if args.max_pending_embeddings is not None and args.max_pending_embeddings < 0:
        raise UsageError("--max-pending-embeddings must be >= 0")
    for flag, value in (("--wave-timeout", args.wave_timeout), ("--round-interval", args.round_interval)):
        if value is not None and not 0 < value < math.inf:
            raise UsageError(f"{flag} must be a number of seconds > 0")
    if args.max_queue_depth is not None and args.max_queue_depth < 0:
        raise UsageError("--max-queue-depth must be >= 0")
    if args.max_queue_depth is not None and not args.queue:
        raise UsageError("--max-queue-depth goes with --queue")
    # --undo goes in waves too (its gates between them), but starts no workflow
    return {"trigger_embeddings": args.trigger_embeddings or (args.wave_size is not None and not args.undo),
            "wave_timeout": DEFAULT_WAVE_TIMEOUT if args.wave_timeout is None else args.wave_timeout,
            "round_interval": DEFAULT_ROUND_INTERVAL if args.round_interval is None else args.round_interval,
            "max_queue_depth": (DEFAULT_MAX_QUEUE_DEPTH if args.max_queue_depth is None
                                else args.max_queue_depth),
            "queues": tuple(args.queue or ()), "dead_letter_queues": tuple(args.dead_letter_queue or ())}


def workflow_names(args: argparse.Namespace, prod: StageOutputs, sources: dict[str, str]) -> tuple[str, ...]:
    """--workflow's values in order (output:KEY read from prod's stack outputs), else the line
    and word state machines. The two kinds of naming do not mix: which would start first?"""
    if not args.workflow:
        return args.line_state_machine, args.word_state_machine
    if (args.line_state_machine, args.word_state_machine) != (DEFAULT_LINE_MACHINE, DEFAULT_WORD_MACHINE):
        raise UsageError("give the workflows with --workflow or with --line-state-machine/"
                         "--word-state-machine, not both")
    names = []
    for given in args.workflow:
        if not given.strip():
            raise UsageError("--workflow '': expected a name, an ARN, a prefix or output:KEY")
        if given.startswith("output:"):
            key = given[len("output:"):]
            if prod.label is None:
                raise UsageError(f"--workflow {given}: output:KEY reads prod's stack outputs; "
                                 "give --prod-config FILE or --prod-stack NAME")
            value = prod.value(key)
            if value is None:
                raise UsageError(f"--workflow {given}: {prod.label} has no {key!r}")
            sources[f"workflow {value}"] = f"from {prod.label}: {key}"
            given = value
        names.append(given)
    if len(set(names)) < len(names):
        raise UsageError(f"--workflow names a workflow twice: {', '.join(names)}")
    return tuple(names)


def resolve_config(args: argparse.Namespace, environ: Mapping[str, str],
                   argv: Sequence[str] = ()) -> tuple[Config, ConfigOrigin]:
    """Merge flags, stack outputs (files or pulumi) and environment variables, in that order of
    precedence, remembering where each value came from."""
    if args.max_workers < 1:
        raise UsageError("--max-workers must be at least 1")
    if args.max_retries < 0:
        raise UsageError("--max-retries must be at least 0")
    if args.limit is not None and args.limit < 1:  # 0 would leave every image "for later", forever
        raise UsageError("--limit must be at least 1 (a dry run shows the plan without copying)")
    if args.max_items_per_second is not None and not args.max_items_per_second > 0:
        raise UsageError("--max-items-per-second must be > 0")
    poll_schedule(environ)  # a bad value is refused now, not when the first wave waits
    stages = {stage: load_stage(args, stage, environ) for stage in ("dev", "prod")}
    named: dict[str, str | None] = {}
    sources: dict[str, str] = {}
    missing: dict[str, str] = {}
    for name, env in ENV_VARS.items():
        stage, output = STACK_VALUES[name]
        outputs = stages[stage]
        key = PULUMI_KEYS[output]
        from_stack = outputs.value(key)
        candidates = [(getattr(args, name), f"given as {flag_of(name)}"),
                      (from_stack, f"from {outputs.label}: {key}"),
                      (environ.get(env), f"from environment {env}")]
        value, source = next(((v, s) for v, s in candidates if v), (None, None))
        named[name] = value
        if source:
            sources[name] = source
        if outputs.label is not None and not from_stack:
            missing[name] = f"{outputs.label} has no {key!r}"
    skip_existing = args.skip_existing
    derived = {
        "export_dir": args.export_dir or Path("dev.export"),
        "export_dir_given": args.export_dir is not None,
        **endpoint_settings(args, environ, sources),
        "shard": parse_shard(args.shard),
        "progress": not args.no_progress,
        # --overwrite-changed means "make prod match the export", which images skipped whole
        # would never do; an explicit --skip-existing still wins (and check_config warns).
        "skip_existing": (not (args.overwrite_changed or args.mirror) if skip_existing is None
                          else skip_existing),
        "image_ids": read_image_ids(args.image_id, args.image_ids_file),
        **mirror_settings(args),
        **wave_settings(args),
        "workflows": workflow_names(args, stages["prod"], sources),
        "workflows_given": tuple(args.workflow or ()),
        **named,
    }
    as_given = {f.name: getattr(args, f.name) for f in dataclasses.fields(Config)
                if f.name not in derived and hasattr(args, f.name)}
    return Config(**as_given, **derived), ConfigOrigin(sources, missing, list(argv))


def mirror_settings(args: argparse.Namespace) -> dict[str, Any]:
    """--mirror, --delete-missing and their lists, --journal (a live destructive run always
    has one: a default name next to the report), --undo."""
    if args.mirror and args.skip_existing:
        raise UsageError("--mirror compares the images prod holds: it cannot go with --skip-existing")
    if args.delete_image_ids is not None and not args.delete_missing:
        raise UsageError("--delete-image-ids lists what --delete-missing deletes: give both")
    destructive = args.mirror or args.delete_missing or args.overwrite_changed
    journal = args.journal
    if journal is None and destructive and not args.dry_run and not args.undo:
        journal = (args.report.with_suffix(".journal.jsonl") if args.report else
                   Path(f"copy-journal-{dt.datetime.now(dt.timezone.utc):%Y%m%dT%H%M%SZ}.jsonl"))
    return {
        "delete_image_ids": read_image_ids(None, args.delete_image_ids, "--delete-image-ids"),
        "protect": frozenset(i.lower() for i in read_image_ids(None, args.protect, "--protect") or ()),
        "journal": journal,
    }


# Where Step Functions requests go when --sfn-endpoint-url is not given, after --endpoint-url:
# botocore reads AWS_ENDPOINT_URL_<service id> (Step Functions' id is SFN) and then
# AWS_ENDPOINT_URL; the tool reads them itself (and AWS_ENDPOINT_URL_STEPFUNCTIONS, which
# botocore does not) and passes what it found, so the header says where the workflows start.
SFN_ENDPOINT_VARS = ("AWS_ENDPOINT_URL_SFN", "AWS_ENDPOINT_URL_STEPFUNCTIONS", "AWS_ENDPOINT_URL")
SQS_ENDPOINT_VARS = ("AWS_ENDPOINT_URL_SQS", "AWS_ENDPOINT_URL")
S3_ENDPOINT_VARS = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
AWS_ENDPOINT_DOMAINS = (".amazonaws.com", ".amazonaws.com.cn", ".api.aws", ".c2s.ic.gov",
                        ".sc2s.sgov.gov")


def endpoint_settings(args: argparse.Namespace, environ: Mapping[str, str],
                      sources: dict[str, str]) -> dict[str, str | None]:
    """DynamoDB's, Step Functions' and SQS's endpoints (None: AWS), each checked like a flag,
    and where each came from (in `sources`). A non-AWS --endpoint-url, a local engine such as
    moto, is used for Step Functions and SQS too unless their own flag is given; an AWS one is
    DynamoDB's own, never theirs."""
    def first(name: str, candidates: Iterable[tuple[str | None, str, str]]) -> str | None:
        for value, what, source in candidates:
            if value:
                sources[name] = source
                return endpoint_value(value, what)
        return None

    def env(names: Sequence[str]) -> list[tuple[str | None, str, str]]:
        return [(environ.get(v), f"environment {v}", f"from environment {v}") for v in names]

    local = args.endpoint_url if args.endpoint_url and not is_aws_endpoint(args.endpoint_url) else None
    return {
        "endpoint_url": first("endpoint_url", [
            (args.endpoint_url, "--endpoint-url", "given as --endpoint-url"),
            *env(("AWS_ENDPOINT_URL_DYNAMODB", "AWS_ENDPOINT_URL"))]),
        "sfn_endpoint_url": first("sfn_endpoint_url", [
            (args.sfn_endpoint_url, "--sfn-endpoint-url", "given as --sfn-endpoint-url"),
            (local, "--endpoint-url", "given as --endpoint-url"), *env(SFN_ENDPOINT_VARS)]),
        "sqs_endpoint_url": first("sqs_endpoint_url", [
            (args.sqs_endpoint_url, "--sqs-endpoint-url", "given as --sqs-endpoint-url"),
            (local, "--endpoint-url", "given as --endpoint-url"), *env(SQS_ENDPOINT_VARS)]),
        "s3_endpoint_url": first("s3_endpoint_url", [
            (args.s3_endpoint_url, "--s3-endpoint-url", "given as --s3-endpoint-url"),
            (local, "--endpoint-url", "given as --endpoint-url"), *env(S3_ENDPOINT_VARS)]),
    }


def endpoint_value(url: str, what: str) -> str:
    """An endpoint URL as botocore takes it: http(s)://host[:port][/path]."""
    try:
        parts = urllib.parse.urlsplit(url)
        valid = parts.scheme in ("http", "https") and bool(parts.hostname) and \
            (parts.port is None or parts.port > 0)  # .port raises ValueError for a bad port
    except ValueError:
        valid = False
    if not valid:
        raise UsageError(f"{what} {url!r}: not an endpoint URL (expected http://HOST[:PORT] or "
                         "https://HOST[:PORT])")
    return url


def is_aws_endpoint(url: str | None) -> bool:
    """True for None (botocore's default, AWS) and for AWS's own host names."""
    if url is None:
        return True
    host = (urllib.parse.urlsplit(url).hostname or "").lower().rstrip(".")
    return host.endswith(AWS_ENDPOINT_DOMAINS)


def check_sfn_endpoint(cfg: Config, origin: ConfigOrigin) -> None:
    """A rehearsal against a local DynamoDB must not start prod's workflows: where DynamoDB goes
    to a non-AWS endpoint, Step Functions may not silently go to AWS."""
    if cfg.trigger_embeddings and not is_aws_endpoint(cfg.endpoint_url) and cfg.sfn_endpoint_url is None:
        flag = "--wave-size" if cfg.wave_size else "--trigger-embeddings"
        raise UsageError(f"DynamoDB goes to {cfg.endpoint_url} ({origin.of('endpoint_url')}) but Step "
                         f"Functions would go to AWS, where {flag} would start prod's workflows: "
                         "give the Step Functions endpoint with --sfn-endpoint-url URL or "
                         "AWS_ENDPOINT_URL_SFN")
    gates = cfg.queues or cfg.dead_letter_queues
    if gates and not is_aws_endpoint(cfg.endpoint_url) and cfg.sqs_endpoint_url is None:
        raise UsageError(f"DynamoDB goes to {cfg.endpoint_url} ({origin.of('endpoint_url')}) but SQS "
                         "would go to AWS, where the queue gates would read prod's queues: give the "
                         "SQS endpoint with --sqs-endpoint-url URL or AWS_ENDPOINT_URL_SQS")
    if cfg.copy_objects and not is_aws_endpoint(cfg.endpoint_url) and cfg.s3_endpoint_url is None:
        raise UsageError(f"DynamoDB goes to {cfg.endpoint_url} ({origin.of('endpoint_url')}) but S3 "
                         "would go to AWS, where --copy-objects would write prod's buckets: give the "
                         "S3 endpoint with --s3-endpoint-url URL or AWS_ENDPOINT_URL_S3")
    if cfg.allow_missing_objects and not cfg.copy_objects:
        raise UsageError("--allow-missing-objects goes with --copy-objects")


def sfn_endpoint_text(cfg: Config, origin: ConfigOrigin) -> str:
    """Where workflows are started (and the queue gates read), as the header, the prompt and
    --trigger-embeddings say it."""
    text = "Step Functions: " + (f"{cfg.sfn_endpoint_url} ({origin.of('sfn_endpoint_url')})"
                                 if cfg.sfn_endpoint_url else "(AWS)")
    if cfg.queues or cfg.dead_letter_queues:
        text += "; SQS: " + (f"{cfg.sqs_endpoint_url} ({origin.of('sqs_endpoint_url')})"
                             if cfg.sqs_endpoint_url else "(AWS)")
    return text


# Used with fullmatch: `$` also matches before a trailing newline, so "<uuid>\n" would pass a
# ^...$ match and become a key no other tool finds. \A...\Z keeps even .match() exact.
UUID_RE = re.compile(r"\A[0-9a-f]{8}-[0-9a-f]{4}-[45][0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}\Z", re.I)


def read_image_ids(ids: Sequence[str] | None, path: Path | None,
                   flag: str = "--image-ids-file") -> tuple[str, ...] | None:
    """--image-id (repeatable) and --image-ids-file (one id a line), in order, deduplicated in
    any case; also the id files of --delete-image-ids and --protect (`flag`)."""
    if not ids and path is None:
        return None
    found = [(i, "--image-id") for i in ids or ()]
    if path is not None:
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"cannot read {flag} {path}: {exc}") from None
        found += [(line.strip(), f"{path} line {n}") for n, line in enumerate(lines, 1)
                  if line.strip()]
    first: dict[str, str] = {}  # an id listed again in another case is the same image
    for image_id, where in found:
        if not UUID_RE.fullmatch(image_id):
            raise UsageError(f"{where}: {image_id!r} is not an image id (a version 4/5 UUID)")
        first.setdefault(image_id.lower(), image_id)
    return tuple(first.values())


def check_config(cfg: Config, origin: ConfigOrigin) -> list[str]:
    """Refuse configurations that cannot work or are unsafe; return warnings. Each operation is
    checked only for the values it uses, and messages say where a value came from."""
    warnings = []
    if cfg.trigger_embeddings and (cfg.status or cfg.verify):
        flag = "--wave-size" if cfg.wave_size else "--trigger-embeddings"
        raise UsageError(f"{flag} goes with a copy" + ("" if cfg.wave_size else " or on its own")
                         + ", not with --status/--verify (run those on their own)")
    check_source_config(cfg)
    check_mirror_config(cfg)
    check_sfn_endpoint(cfg, origin)
    if (cfg.copies or cfg.verify or cfg.export_dir_given) and not cfg.other_source \
            and not cfg.export_dir.is_dir():
        raise UsageError(f"export directory not found: {cfg.export_dir}" if not cfg.export_dir.exists()
                         else f"--export-dir {cfg.export_dir}: is a file, not a directory of exports")
    needed = cfg.needed_values()
    for name in sorted(needed):
        if getattr(cfg, name) is None and name in origin.missing:
            if name == "table" and cfg.copies and cfg.dry_run:  # a dry run can do without prod
                warnings.append(f"{origin.missing[name]}: prod is not checked (give --table or "
                                f"{ENV_VARS[name]} to check it)")
                continue
            raise UsageError(f"{origin.missing[name]}, which {cfg.operation} needs: add it, or give "
                             f"{flag_of(name)} or {ENV_VARS[name]}")
    if "dev_raw_bucket" in needed:
        for kind in ("raw", "cdn"):
            warnings += check_bucket_pair(cfg, origin, kind)
    if "table" in needed and not cfg.table and (cfg.status or cfg.verify or not cfg.dry_run):
        raise UsageError(f"no prod table: {cfg.operation} needs one; give --table, --prod-config, "
                         f"--prod-stack or {ENV_VARS['table']}")
    if cfg.copies and cfg.overwrite_changed and cfg.skip_existing:
        warnings.append("--overwrite-changed with --skip-existing: images already in prod are "
                        "skipped whole, so none of their items is overwritten (drop --skip-existing "
                        "to overwrite them)")
    if cfg.copies and not cfg.dry_run and cfg.table:
        if cfg.dev_table and cfg.table == cfg.dev_table and not cfg.force:
            raise UsageError(f"refusing to copy into {cfg.table!r} ({origin.of('table')}): it is "
                             f"the configured dev table ({origin.of('dev_table')}; --force overrides)")
        if looks_like_dev_table(cfg.table) and not cfg.force:
            raise UsageError(f"refusing to copy into {cfg.table!r} ({origin.of('table')}): the name "
                             "looks like a dev table (--force overrides)")
    return warnings


def check_mirror_config(cfg: Config) -> None:
    """Deleting is allowed only where the source is known to be complete: an image missing from
    a filtered selection is not missing from dev. --undo runs on its own."""
    if cfg.undo:
        others = [flag for flag, on in (("--mirror", cfg.mirror), ("--delete-missing", cfg.delete_missing),
                                        ("--overwrite-changed", cfg.overwrite_changed),
                                        ("--status", cfg.status), ("--verify", cfg.verify),
                                        ("--trigger-embeddings", cfg.trigger_embeddings),
                                        ("--protect", bool(cfg.protect)),
                                        ("--journal", cfg.journal is not None)) if on]
        if others:
            raise UsageError(f"--undo runs on its own, not with {', '.join(others)}")
        return
    if cfg.journal is not None and not (cfg.mirror or cfg.delete_missing or cfg.overwrite_changed):
        raise UsageError("--journal records what --mirror, --delete-missing or --overwrite-changed "
                         "overwrite or delete: give one of them")
    if not cfg.delete_missing:
        return
    if not cfg.copies:
        raise UsageError("--delete-missing goes with a copy, not with --status/--verify")
    if not cfg.table:
        raise UsageError("--delete-missing needs the prod table (its images are listed to find "
                         "those the source lacks), also in a dry run")
    if cfg.delete_image_ids is not None:
        return
    narrowing = [flag for flag, on in (("--image-id/--image-ids-file", cfg.image_ids is not None),
                                       ("--limit", cfg.limit is not None),
                                       ("--shard", cfg.shard is not None)) if on]
    if not cfg.source_table:
        raise UsageError("--delete-missing deletes what the source lacks, so it needs a source known "
                         "to be complete: --source-table (read in full), or the images to delete "
                         "listed with --delete-image-ids FILE")
    if narrowing:
        raise UsageError(f"--delete-missing with {', '.join(narrowing)}: a narrowed selection would "
                         "call every other image missing; list the images to delete with "
                         "--delete-image-ids FILE")


def check_bucket_pair(cfg: Config, origin: ConfigOrigin, kind: str) -> list[str]:
    """Both names of a bucket pair or neither; neither is refused for a live copy and for
    --verify (which builds the items prod should hold: without the renames it would call every
    correctly copied IMAGE and RECEIPT item different, and its repair command would not run)."""
    dev, prod = f"dev_{kind}_bucket", f"prod_{kind}_bucket"
    for given, lacking in ((dev, prod), (prod, dev)):
        if getattr(cfg, given) and not getattr(cfg, lacking):
            why = f" ({origin.missing[lacking]})" if lacking in origin.missing else ""
            raise UsageError(f"{flag_of(given)} is set ({origin.of(given)}) but {flag_of(lacking)} "
                             f"is not{why}: give {flag_of(lacking)} or {ENV_VARS[lacking]}, or "
                             "neither of the two")
    if getattr(cfg, dev):
        return []
    give = f"give --dev-{kind}-bucket/--prod-{kind}-bucket or --dev-config/--prod-config"
    if cfg.verify:
        raise UsageError(f"{kind} bucket names not configured, which --verify needs to compare "
                         f"prod's items with the export's: {give}")
    msg = f"{kind} bucket names not configured: {kind} S3 bucket names would NOT be rewritten ({give})"
    if cfg.copies and not cfg.dry_run:
        raise UsageError(msg)
    return [msg]


def check_source_config(cfg: Config) -> None:
    """One source at a time; the dev table is only ever read, and never the target."""
    given = [flag for flag, on in (("--export-dir", cfg.export_dir_given),
                                   ("--source-table", cfg.source_table is not None),
                                   ("--source-items", cfg.source_items is not None)) if on]
    if len(given) > 1:
        raise UsageError(f"give one source: {' or '.join(given)}")
    connection = [f"--source-{n}" for n in ("region", "profile", "endpoint-url")
                  if getattr(cfg, f"source_{n.replace('-', '_')}")
                  and not (n == "profile" and cfg.copy_objects)]  # also the dev buckets' profile
    if connection and not cfg.source_table:
        raise UsageError(f"{', '.join(connection)} only go with --source-table")
    if cfg.source_endpoint_url:
        endpoint_value(cfg.source_endpoint_url, "--source-endpoint-url")
    if cfg.source_table is not None and cfg.source_table in (cfg.table, ""):
        raise UsageError(f"--source-table {cfg.source_table!r} is the prod table (--table): "
                         "the source is read, the target written")
    if cfg.source_items is not None:
        item_files(cfg.source_items)  # a missing path or an ION export is refused up front


def source_name(cfg: Config) -> str | Path:
    """The source as a status or verify line names it: the table, the item export or the
    export directory."""
    return cfg.source_table or cfg.source_items or cfg.export_dir


def describe_source(cfg: Config) -> str:
    """Where the images are read from, as the header and the report say it."""
    if cfg.source_table:
        url = cfg.source_endpoint_url or cfg.endpoint_url
        return f"Source table: {cfg.source_table}" + (f" at {url}" if url else "")
    if cfg.source_items:
        return f"Source items: {cfg.source_items}"
    return f"Export: {cfg.export_dir}"


def check_output_paths(cfg: Config) -> None:
    """--report and --dump-items must be writable before anything is read or written:
    finding out after an hour of copying would lose the record of what was done. Neither
    may overwrite an input or the other output."""
    outputs = [(flag, path) for flag, path in (("--report", cfg.report), ("--dump-items", cfg.dump_items),
                                               ("--journal", cfg.journal if not cfg.dry_run else None))
               if path is not None]
    for flag, path in outputs:
        parent = path.parent if str(path.parent) else Path(".")
        check_output_kind(flag, path)
        if path.is_dir():
            raise UsageError(f"{flag} {path}: is a directory")
        if not parent.is_dir():
            raise UsageError(f"{flag} {path}: directory {parent} does not exist")
        if not os.access(path if path.exists() else parent, os.W_OK):
            raise UsageError(f"{flag} {path}: not writable")
        check_not_an_input(cfg, flag, path)
    for (flag_a, a), (flag_b, b) in itertools.combinations(outputs, 2):
        if same_file(a, b) and not same_file(a, Path(os.devnull)):
            raise UsageError(f"{flag_a} and {flag_b} both name {a}: each needs a file of its own")


# Outputs that are no regular file but are fine to write to. /dev/full is a full disk (every
# write fails with ENOSPC, which the run reports): the tests' stand-in for a disk that fills up.
SPECIAL_OUTPUTS = ("/dev/null", "/dev/stdout", "/dev/full")


def check_output_kind(flag: str, path: Path) -> None:
    """A FIFO would block the run at the end (opening it waits for a reader), a socket cannot be
    opened, a device is no record: refused by stat, without opening them."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return  # not there yet: it is created as a regular file
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode) or os.path.abspath(path) in SPECIAL_OUTPUTS \
            or same_file(path, Path(os.devnull)):
        return
    try:
        check_regular(mode)
    except InputError as exc:
        raise UsageError(f"{flag} {path}: {exc.message}; give a regular file (or /dev/null)") from None


def same_file(a: Path, b: Path) -> bool:
    """The same file: the same resolved path, or the same device and inode (a hard link, a
    symlink, another spelling of the path)."""
    try:
        if a.resolve() == b.resolve():
            return True
        return os.path.samestat(os.stat(a), os.stat(b))
    except (OSError, RuntimeError):  # missing (nothing to overwrite), or a symlink loop
        return False


def run_inputs(cfg: Config) -> Iterator[tuple[str, Path]]:
    """Every file this run reads, and how messages name it. Export files are listed (not just
    the directory): one may be a symlink to a file elsewhere."""
    for flag, path in (("--dev-config", cfg.dev_config), ("--prod-config", cfg.prod_config),
                       ("--image-ids-file", cfg.image_ids_file), ("--source-items", cfg.source_items),
                       ("--undo", cfg.undo)):
        if path is not None:
            yield f"the {flag} file", path
    if cfg.source_items is not None and cfg.source_items.is_dir():
        for data in item_files(cfg.source_items).files:
            yield f"a data file of --source-items {cfg.source_items}", data
    if not cfg.other_source and cfg.export_dir.is_dir():
        for export_file in list_export_files(cfg.export_dir):
            yield f"the export file {export_file.name}", export_file


def check_not_an_input(cfg: Config, flag: str, path: Path) -> None:
    """Writing over the data being migrated, or over a file the run reads, would destroy it; a
    file written into the export directory would be read as an image by the next run."""
    target = path.resolve()
    if os.path.lexists(path) and not same_file(path, Path(os.devnull)):
        for what, input_path in run_inputs(cfg):
            if same_file(path, input_path):
                raise UsageError(f"{flag} {path}: is {what}, which this run reads: writing it would "
                                 "destroy it; write it elsewhere")
    export = cfg.export_dir.resolve()
    if target == export or export in target.parents:
        raise UsageError(f"{flag} {path}: is inside the export directory {cfg.export_dir} "
                         "(every file there is read as an image); write it elsewhere")


def looks_like_dev_table(name: str) -> bool:
    """True for names with a 'dev' or 'development' token, e.g. ReceiptsTable-dev-1a2b."""
    return re.search(r"(?i)(^|[^a-z0-9])(dev|development)([^a-z0-9]|$)", name) is not None or \
        re.search(r"(?:^|[a-z0-9])Dev(?:[A-Z0-9]|$)", name) is not None


def missing_runtime_packages(cfg: Config) -> list[str]:
    """The runtime packages this run needs but this interpreter lacks. A dry run without a
    table uses the standard library only, so it runs on any Python 3.10+ as it is."""
    needed = []
    if cfg.reads_table or (cfg.trigger_embeddings and not cfg.dry_run):
        needed.append("boto3")
        if cfg.copies and cfg.progress and sys.stderr.isatty():
            needed.append("tqdm")
    return [name for name in needed if importlib.util.find_spec(name) is None]


def missing_package_message(names: Sequence[str]) -> str:
    """One line: what is missing, for which interpreter, and the command that works."""
    python = f"{sys.executable} (Python {sys.version_info[0]}.{sys.version_info[1]})"
    venv = Path(__file__).resolve().parent / ".venv" / "bin" / "python"
    fix = (f"run it with the project's venv: {venv} {Path(sys.argv[0]).name} ..." if venv.exists()
           else f"install {'it' if len(names) == 1 else 'them'}: python3 -m venv .venv && "
                ".venv/bin/pip install -r requirements.txt, then run "
                ".venv/bin/python copy_dynamodb_dev_to_prod.py ...")
    return f"this run needs {' and '.join(names)}, not installed for {python}; {fix}"


def repair_command(origin: ConfigOrigin, overwrite: bool) -> str:
    """The copy command that repairs what --verify found: this run's own arguments, as a live
    copy that re-syncs images already in prod (and overwrites differing items if asked)."""
    args, skip_next = [], False
    # --verify checks every image (it ignores --limit): the repair must reach each of them
    drop_with_value = {"--report", "--dump-items", "--limit"}
    for arg in origin.argv:
        if skip_next:
            skip_next = False
            continue
        if arg in drop_with_value:
            skip_next = True
            continue
        if arg in ("--verify", "--status", "--dry-run", "--skip-existing") or \
                arg.split("=", 1)[0] in drop_with_value:
            continue
        args.append(arg)
    args += ["--no-dry-run", "--overwrite-changed" if overwrite else "--no-skip-existing"]
    python = Path(sys.executable)
    try:
        shown_python = str(python.relative_to(Path.cwd()))
    except ValueError:
        shown_python = str(python)
    script = sys.argv[0] if sys.argv[0].endswith(".py") else __file__
    return shlex.join([shown_python, script, *args])


# =============================================================================
# 3. Schema and items
# =============================================================================
# Each entity kind is one KindSpec: its fields (with codecs that validate and
# encode), its key templates and its index templates. The codecs reproduce
# receipt_dynamo's to_item() exactly (ITEMS.md §3-§4); build_item() is the only
# code that walks a spec.


AttributeValue = dict[str, Any]


class FieldError(ValueError):
    """A value a codec rejects; the caller adds file/entity/index/field."""


OMIT = object()        # the codec says: write no attribute


KEY_ONLY = object()    # the field is validated and used in keys, but not written


REQUIRED = object()    # no default: the field must be present


NUMBER_CONTEXT = Context(prec=28, rounding=ROUND_HALF_UP)  # Python's default precision


NULL: AttributeValue = {"NULL": True}


def json_type(value: Any) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean",
             int: "integer", float: "number", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def finite_number(v: Any) -> float | int:
    """Ints and floats only: bool, strings and NaN/Infinity are rejected."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise FieldError(f"expected a number, got {json_type(v)}")
    if isinstance(v, float) and not math.isfinite(v):
        raise FieldError(f"number must be finite, got {v}")
    return v


# Coordinates and angles repeat across an image (corners share the box's x and y, the
# words of a line share its angle), so formatted numbers are worth remembering.
FIXED_CACHE: dict[int, dict[float, str]] = {}


def fixed_text(v: Any, places: int) -> str:
    """Fk(v): the float's repr, rounded half-up to k decimals, fixed-point."""
    cache = FIXED_CACHE.setdefault(places, {})
    # Only finite floats are ever cached (NaN finds nothing), and 0.0 == -0.0 as keys
    # but not as text: a hit needs no further checks.
    text = cache.get(v) if type(v) is float and v else None
    if text is None:
        f = float_of(v)
        try:
            q = Decimal(repr(f)).quantize(Decimal(1).scaleb(-places), context=NUMBER_CONTEXT)
        except InvalidOperation:
            raise FieldError(f"{v!r} is too large for {places} decimals") from None
        text = format(q, "f")
        if len(cache) >= 4096:  # small and bounded: repeats are local (one line, one word)
            cache.clear()
        if f:
            cache[f] = text
    return text


# DynamoDB numbers: 38 significant digits, magnitude 1e-130 .. 9.99...e125. The float bounds
# are for floats only (repr_text); integers are compared with the exact integer bound.
MIN_DYNAMODB_NUMBER = 1e-130
MAX_DYNAMODB_NUMBER = 1e126
MAX_DYNAMODB_INT = 10**126


def repr_text(v: Any) -> str:
    """R(v): Python's float repr; ints become floats first (0 -> '0.0'). The bounds are exact
    for the text written: repr is the shortest text that reads back as the float, so it keeps
    the floats' order, and the float bounds' reprs are exactly 1e-130 and 1e126."""
    f = float_of(v)
    if f != 0 and not MIN_DYNAMODB_NUMBER <= abs(f) < MAX_DYNAMODB_NUMBER:
        raise FieldError(f"{v!r} is outside the range DynamoDB can store (1e-130 .. 1e126)")
    return repr(f)


def float_of(v: Any) -> float:
    """A number as the float these codecs write; an int too large for a float is a FieldError
    (float() raises OverflowError past 1.8e308), not a crash."""
    try:
        return float(finite_number(v))
    except OverflowError:
        raise FieldError(f"{v} is outside the range DynamoDB can store (1e-130 .. 1e126)") from None


def int_text(v: int) -> str:
    """An integer as DynamoDB N text: at most 38 significant digits, below 10**126. Compared
    as integers: the float 1e126 is 7.5e109 below 10**126, so 38 nines times 10**88 would
    be refused by a comparison with it, though DynamoDB stores it."""
    text = str(v)
    if len(text.lstrip("-").rstrip("0")) > 38:
        raise FieldError(f"{v} has more digits than DynamoDB can store (38)")
    if abs(v) >= MAX_DYNAMODB_INT:
        raise FieldError(f"{v} is outside the range DynamoDB can store (below 10**126)")
    return text


def int_value(v: Any, minimum: int | None = None) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise FieldError(f"expected an integer, got {json_type(v)} {v!r}")
    if minimum is not None and v < minimum:
        raise FieldError(f"must be >= {minimum}, got {v}")
    return v


def str_value(v: Any, allow_empty: bool = True) -> str:
    if not isinstance(v, str):
        raise FieldError(f"expected a string, got {json_type(v)}")
    if not allow_empty and v == "":
        raise FieldError("must not be empty")
    return v


def parse_isoformat(text: str) -> dt.datetime:
    """datetime.fromisoformat with Python 3.11's grammar (Z suffix) on 3.10 too."""
    try:
        return dt.datetime.fromisoformat(text)
    except ValueError:
        if sys.version_info < (3, 11) and text.endswith("Z"):
            return dt.datetime.fromisoformat(text[:-1] + "+00:00")
        raise


# --- codecs: value -> AttributeValue | OMIT | KEY_ONLY, raising FieldError ----
Codec = Callable[[Any], Any]


def s_any(v: Any) -> AttributeValue:
    return {"S": str_value(v)}


def s_nonempty(v: Any) -> AttributeValue:
    return {"S": str_value(v, allow_empty=False)}


def s_enum(*allowed: str) -> Codec:
    def codec(v: Any) -> AttributeValue:
        if v not in allowed:
            raise FieldError(f"{v!r} is not one of {', '.join(allowed)}")
        return {"S": v}
    return codec


def s_or_null_truthy(v: Any) -> AttributeValue:
    """Policy T: a non-empty string, else NULL ('' and None both give NULL)."""
    if v is None:
        return NULL
    return {"S": v} if str_value(v) else NULL


def s_or_null(allow_empty: bool = True, enum: Sequence[str] = ()) -> Codec:
    """Policy N: None gives NULL, any string is kept ('' only where allowed)."""
    def codec(v: Any) -> AttributeValue:
        if v is None:
            return NULL
        str_value(v, allow_empty)
        if enum and v not in enum:
            raise FieldError(f"{v!r} is not one of {', '.join(enum)}")
        return {"S": v}
    return codec


def n_int(minimum: int | None = None, nullable: bool = False) -> Codec:
    def codec(v: Any) -> AttributeValue:
        if v is None and nullable:
            return NULL
        return {"N": int_text(int_value(v, minimum))}
    return codec


def key_int(minimum: int) -> Codec:
    def codec(v: Any) -> object:
        int_value(v, minimum)
        return KEY_ONLY
    return codec


def key_uuid(v: Any) -> object:
    if not isinstance(v, str) or not UUID_RE.fullmatch(v):
        raise FieldError(f"not a version 4/5 UUID: {v!r}")
    return KEY_ONLY


def s_uuid(v: Any) -> AttributeValue:
    key_uuid(v)
    return {"S": v}


def place_id(v: Any) -> AttributeValue:
    if str_value(v) and not v.strip():
        raise FieldError("must not be only whitespace")
    return {"S": v}


def n_repr(lo: float = -math.inf, hi: float = math.inf, missing: Any = None) -> Codec:
    """R() numbers; `missing` is what None becomes (NULL, OMIT, or None = not allowed)."""
    def codec(v: Any) -> Any:
        if v is None and missing is not None:
            return missing
        if not lo <= finite_number(v) <= hi:
            raise FieldError(f"{v} is outside [{lo}, {hi}]")
        return {"N": repr_text(v)}
    return codec


def n_fixed(places: int) -> Codec:
    return lambda v: {"N": fixed_text(v, places)}


def confidence_f2(v: Any) -> AttributeValue:
    if not 0 < finite_number(v) <= 1:
        raise FieldError(f"confidence must be in (0, 1], got {v}")
    return {"N": fixed_text(v, 2)}


def number_map(keys: tuple[str, ...], places: int | None) -> Codec:
    """A map with exactly these numeric keys: Fk text, or R() when places is None."""
    def codec(v: Any) -> AttributeValue:
        if not isinstance(v, dict):
            raise FieldError(f"expected an object with keys {', '.join(keys)}, got {json_type(v)}")
        if set(v) != set(keys):
            raise FieldError(f"keys must be exactly {', '.join(keys)}, got {', '.join(sorted(v))}")
        if places is None:
            return {"M": {k: {"N": repr_text(v[k])} for k in keys}}
        return {"M": {k: {"N": fixed_text(v[k], places)} for k in keys}}
    return codec


BOX_KEYS = ("x", "y", "width", "height")


POINT_KEYS = ("x", "y")


def bool_value(missing: Any = None) -> Codec:
    def codec(v: Any) -> Any:
        if v is None and missing is not None:
            return missing
        if not isinstance(v, bool):
            raise FieldError(f"expected true or false, got {json_type(v)}")
        return {"BOOL": v}
    return codec


def timestamp_verbatim(v: Any) -> AttributeValue:
    """String-typed timestamps: validated, written byte for byte."""
    try:
        parse_isoformat(str_value(v, allow_empty=False))
    except ValueError:
        raise FieldError(f"not an ISO-8601 date/time: {v!r}") from None
    return {"S": v}


def datetime_iso(nullable: bool = False) -> Codec:
    """Datetime-typed fields: parsed and re-written with isoformat()."""
    def codec(v: Any) -> AttributeValue:
        if v is None and nullable:
            return NULL
        try:
            return {"S": parse_isoformat(str_value(v, allow_empty=False)).isoformat()}
        except ValueError:
            raise FieldError(f"not an ISO-8601 date/time: {v!r}") from None
    return codec


def string_list(as_set: bool) -> Codec:
    """Place lists (L, first occurrence kept) or metadata matched_fields (SS); omitted when empty."""
    def codec(v: Any) -> Any:
        if v is None:
            return OMIT
        if not isinstance(v, list):
            raise FieldError(f"expected a list of strings, got {json_type(v)}")
        for item in v:
            if not isinstance(item, str) or not item.strip():
                raise FieldError(f"list items must be non-blank strings, got {item!r}")
        if as_set:
            if len(set(v)) != len(v):
                raise FieldError("values must be unique")
            return {"SS": list(v)} if v else OMIT
        unique = list(dict.fromkeys(v))
        return {"L": [{"S": s} for s in unique]} if unique else OMIT
    return codec


# DynamoDB's document rules, measured on DynamoDB Local 1.25.1 (tests/test_item_rules.py):
# an attribute's value holds at most 31 maps/lists nested in one another (the attribute
# itself counted, 32 levels; 32 nested containers are refused, even when the innermost is
# empty), and a map key is, like any attribute name, 1..65,535 bytes of UTF-8.
MAX_NESTING_DEPTH = 31


MAX_NAME_BYTES = 65_535


def generic_value(v: Any, depth: int = 0) -> AttributeValue:
    """Native JSON -> DynamoDB, keeping the int/float distinction of the JSON text.
    `depth` counts the maps/lists around v, so no document recurses past DynamoDB's limit."""
    if v is None:
        return NULL
    if isinstance(v, bool):
        return {"BOOL": v}
    if isinstance(v, int):
        return {"N": int_text(v)}
    if isinstance(v, float):
        return {"N": repr_text(v)}
    if isinstance(v, str):
        return {"S": v}
    if isinstance(v, (list, dict)):
        if depth >= MAX_NESTING_DEPTH:
            raise FieldError(f"nested deeper than DynamoDB's {MAX_NESTING_DEPTH + 1} levels")
        if isinstance(v, list):
            return {"L": [generic_value(x, depth + 1) for x in v]}
        return {"M": {map_key(k): generic_value(x, depth + 1) for k, x in v.items()}}
    raise FieldError(f"unsupported value {v!r}")


def map_key(k: Any) -> str:
    """A map key DynamoDB accepts as an attribute name: non-empty, at most 65,535 bytes."""
    k = str(k)
    if not k:
        raise FieldError("empty map key (DynamoDB refuses empty attribute names)")
    try:
        size = len(k.encode("utf-8")) if len(k) > MAX_NAME_BYTES // 4 else 0
    except UnicodeEncodeError:
        raise FieldError(f"map key {k[:40]!r} is not valid Unicode (lone surrogate escape)") from None
    if size > MAX_NAME_BYTES:
        raise FieldError(f"map key {k[:40]!r}... is {size:,} bytes, over DynamoDB's "
                         f"{MAX_NAME_BYTES:,}-byte limit for attribute names")
    return k


def generic_map_or_omit(v: Any) -> Any:
    if v is None or v == {}:
        return OMIT
    if not isinstance(v, dict):
        raise FieldError(f"expected an object, got {json_type(v)}")
    return generic_value(v)


def word_extracted_data(v: Any) -> AttributeValue:
    """Word: falsy gives NULL; else exactly {type, value} as strings (extra keys dropped)."""
    if not v:
        return NULL
    if not isinstance(v, dict):
        raise FieldError(f"expected an object, got {json_type(v)}")
    for k in ("type", "value"):
        if k not in v:
            raise FieldError(f"missing key {k!r}")
    return {"M": {k: {"S": str_value(v[k])} for k in ("type", "value")}}


def receipt_word_extracted_data(v: Any) -> AttributeValue:
    """ReceiptWord: None gives NULL; a dict keeps every key, each value as str(value)."""
    if v is None:
        return NULL
    if not isinstance(v, dict):
        raise FieldError(f"expected an object, got {json_type(v)}")
    try:
        return {"M": {map_key(k): {"S": str(x)} for k, x in v.items()}}
    except RecursionError:  # str() of a value nested hundreds of levels deep
        raise FieldError(f"nested deeper than DynamoDB's {MAX_NESTING_DEPTH + 1} levels") from None


def reocr_region(v: Any) -> AttributeValue:
    if v is None:
        return NULL
    item = number_map(BOX_KEYS, None)(v)
    if not (v["width"] > 0 and v["height"] > 0):
        raise FieldError("width and height must be > 0")
    return item


def refine_summary(v: Any) -> AttributeValue:
    if v is None:
        return NULL
    keys = ("subtotal", "tax", "grand_total")
    if not isinstance(v, dict) or not set(v) <= set(keys):
        raise FieldError(f"expected an object with keys {', '.join(keys)}")
    return {"M": {k: NULL if v.get(k) is None else {"N": repr_text(v[k])} for k in keys}}


def one_code_point(v: Any) -> AttributeValue:
    if len(str_value(v)) != 1:
        raise FieldError(f"must be exactly one character, got {v!r}")
    return {"S": v}


# --- enums (ITEMS.md §6) ------------------------------------------------------
EMBEDDING_STATUS = ("NONE", "PENDING", "SUCCESS", "FAILED", "NOISE")


VALIDATION_STATUS = ("NONE", "PENDING", "VALID", "INVALID", "NEEDS_REVIEW")


IMAGE_TYPE = ("SCAN", "PHOTO", "NATIVE")


OCR_STATUS = ("PENDING", "COMPLETED", "FAILED")


OCR_JOB_TYPE = ("REFINEMENT", "FIRST_PASS", "REGIONAL_REOCR", "LINE_ITEM_REFINE")


VALIDATION_METHOD = ("PHONE_LOOKUP", "ADDRESS_LOOKUP", "NEARBY_LOOKUP", "TEXT_SEARCH", "INFERENCE")


MERCHANT_VALIDATION_STATUS = ("MATCHED", "NO_MATCH", "UNSURE")


REOCR_STRATEGY = ("plain", "invert", "deskew", "upscale2x")


# An upper bound of a number map such as a bounding box (3 + 4 x (name + 1 + 21) bytes),
# so the 400 KB check needs to measure only the attributes that can grow.
SMALL_BYTES = 200


@dataclasses.dataclass(frozen=True)
class FieldSpec:
    name: str
    codec: Codec
    default: Any = REQUIRED   # the class default, used when an older export lacks the field
    none_as: Any = None       # what an explicit null means, where receipt_dynamo maps it
    small: bool = False       # the codec's output is a few numbers: at most SMALL_BYTES


@dataclasses.dataclass(frozen=True)
class KindSpec:
    export_key: str
    type: str
    fields: tuple[FieldSpec, ...]
    sk: str
    # (index, PK template, SK template, field that must be truthy or None)
    indexes: tuple[tuple[str, str, str, str | None], ...] = ()
    # extra template values and cross-field checks: entity -> {name: value}
    derive: Callable[[dict[str, Any]], dict[str, Any]] | None = None

    @functools.cached_property
    def field_names(self) -> frozenset[str]:
        return frozenset(f.name for f in self.fields)

    @functools.cached_property
    def index_keys(self) -> tuple[tuple[str, str, str, str, str | None], ...]:
        """indexes with their key attribute names spelled out: (GSInPK, GSInSK, ...)."""
        return tuple((f"{i}PK", f"{i}SK", pk, sk, when) for i, pk, sk, when in self.indexes)

    @functools.cached_property
    def small_fields(self) -> frozenset[str]:
        return frozenset(f.name for f in self.fields if f.small)

    @functools.cached_property
    def small_bytes(self) -> int:
        """An upper bound of the size of all small fields together."""
        return sum(len(name) + SMALL_BYTES for name in self.small_fields)


def fields(*groups: Iterable[FieldSpec]) -> tuple[FieldSpec, ...]:
    return tuple(f for group in groups for f in group)


CORNERS = ("top_left", "top_right", "bottom_left", "bottom_right")


CDN_KEYS = tuple(f"cdn{size}{fmt}_s3_key" for size in ("", "_thumbnail", "_small", "_medium")
                 for fmt in ("", "_webp", "_avif"))


def geometry(text: Codec | None = None) -> list[FieldSpec]:
    """Block G: text, bounding box and corners (F20), angles (F18), confidence (F2)."""
    return [
        FieldSpec("text", text or s_any),
        FieldSpec("bounding_box", number_map(BOX_KEYS, 20), small=True),
        *(FieldSpec(c, number_map(POINT_KEYS, 20), small=True) for c in CORNERS),
        FieldSpec("angle_degrees", n_fixed(18), small=True),
        FieldSpec("angle_radians", n_fixed(18), small=True),
        FieldSpec("confidence", confidence_f2, small=True),
    ]


def s3_fields() -> list[FieldSpec]:
    """Image/Receipt storage fields: raw always S, sha256 and the 14 CDN fields per policy T."""
    return [
        FieldSpec("raw_s3_bucket", s_any),
        FieldSpec("raw_s3_key", s_any),
        FieldSpec("sha256", s_or_null_truthy, None),
        FieldSpec("cdn_s3_bucket", s_or_null_truthy, None),
        *(FieldSpec(k, s_or_null_truthy, None) for k in CDN_KEYS),
    ]


def ids(*names_and_minimums: tuple[str, int]) -> list[FieldSpec]:
    return [FieldSpec(n, key_int(m)) for n, m in names_and_minimums]


IMAGE_ID = FieldSpec("image_id", key_uuid)


IMG = "IMAGE#{image_id}"


RCPT = "IMAGE#{image_id}#RECEIPT#{receipt_id:05d}"


RCPT_WORD = RCPT + "#LINE#{line_id:05d}#WORD#{word_id:05d}"


def derive_label(e: dict[str, Any]) -> dict[str, Any]:
    label = e["label"]
    if not isinstance(label, str) or not label:
        raise InputError("label must be a non-empty string", field="label")
    upper = label.upper()
    if "#" in upper:
        raise InputError(f"label {label!r} contains '#', which breaks the key layout", field="label")
    return {"L": upper, "label_pad": "LABEL#" + upper + "_" * max(0, 34 - len(upper))}


def derive_place(e: dict[str, Any]) -> dict[str, Any]:
    slug = re.sub(r"[^A-Z0-9]+", "_", str(e["merchant_name"]).upper()).strip("_")
    if not slug:
        raise InputError(f"merchant_name {e['merchant_name']!r} has no ASCII letter or digit "
                         "for the merchant index", field="merchant_name")
    if e["validated_by"] not in ("", *VALIDATION_METHOD):
        raise InputError(f"{e['validated_by']!r} is not one of {', '.join(VALIDATION_METHOD)}",
                         field="validated_by")
    for name in ("latitude", "viewport_ne_lat", "viewport_sw_lat"):
        check_range(e, name, 90)
    for name in ("longitude", "viewport_ne_lng", "viewport_sw_lng"):
        check_range(e, name, 180)
    # GSI3SK formats the binary value (not F4), exactly as receipt_dynamo does.
    return {"merchant": slug, "conf4": f"{float(e['confidence']):.4f}"}


def check_range(e: dict[str, Any], name: str, bound: float) -> None:
    v = e[name]
    if v is not None and not -bound <= finite_number(v) <= bound:
        raise InputError(f"{v} is outside [-{bound}, {bound}]", field=name)


def derive_metadata(e: dict[str, Any]) -> dict[str, Any]:
    name = e["canonical_merchant_name"] or e["merchant_name"]
    return {"merchant": str(name).upper().replace(" ", "_")}


KINDS: tuple[KindSpec, ...] = (
    KindSpec(
        "images", "IMAGE",
        fields([IMAGE_ID,
                FieldSpec("width", n_int(1)), FieldSpec("height", n_int(1)),
                FieldSpec("timestamp_added", timestamp_verbatim)],
               s3_fields(),
               [FieldSpec("image_type", s_enum(*IMAGE_TYPE), "SCAN"),
                FieldSpec("receipt_count", n_int(0, nullable=True), None)]),
        sk="IMAGE",
        indexes=(("GSI1", IMG, "IMAGE", None), ("GSI2", IMG, "IMAGE", None),
                 ("GSI3", "IMAGE#{image_type}", "NUM_RECEIPTS#{receipt_count_or_0:05d}", None)),
        derive=lambda e: {"receipt_count_or_0": e["receipt_count"] or 0},
    ),
    KindSpec(
        "lines", "LINE",
        fields([IMAGE_ID], ids(("line_id", 1)), geometry()),
        sk="LINE#{line_id:05d}",
        indexes=(("GSI1", IMG, "LINE#{line_id:05d}", None),),
    ),
    KindSpec(
        "words", "WORD",
        fields([IMAGE_ID], ids(("line_id", 0), ("word_id", 0)), geometry(),
               [FieldSpec("extracted_data", word_extracted_data, None)]),
        sk="LINE#{line_id:05d}#WORD#{word_id:05d}",
        indexes=(("GSI2", IMG, "LINE#{line_id:05d}#WORD#{word_id:05d}", None),),
    ),
    KindSpec(
        "letters", "LETTER",
        fields([IMAGE_ID], ids(("line_id", 1), ("word_id", 1), ("letter_id", 1)),
               geometry(text=one_code_point)),
        sk="LINE#{line_id:05d}#WORD#{word_id:05d}#LETTER#{letter_id:05d}",
    ),
    KindSpec(
        "receipts", "RECEIPT",
        fields([IMAGE_ID], ids(("receipt_id", 1)),
               [FieldSpec("width", n_int(1)), FieldSpec("height", n_int(1)),
                FieldSpec("timestamp_added", timestamp_verbatim)],
               s3_fields(),
               [FieldSpec(c, number_map(POINT_KEYS, 18), small=True) for c in CORNERS]),
        sk="RECEIPT#{receipt_id:05d}",
        indexes=(("GSI1", IMG, "RECEIPT#{receipt_id:05d}", None),
                 ("GSI2", "RECEIPT", RCPT, None),
                 ("GSI4", RCPT, "0_RECEIPT", None)),
    ),
    KindSpec(
        "receipt_lines", "RECEIPT_LINE",
        fields([IMAGE_ID], ids(("receipt_id", 1), ("line_id", 0)), geometry(),
               [FieldSpec("embedding_status", s_enum(*EMBEDDING_STATUS), "NONE"),
                FieldSpec("is_noise", bool_value(), False)]),
        sk="RECEIPT#{receipt_id:05d}#LINE#{line_id:05d}",
        indexes=(("GSI1", "EMBEDDING_STATUS#{embedding_status}", "LINE#" + RCPT + "#LINE#{line_id:05d}",
                  None),
                 ("GSI3", RCPT, "LINE", None),
                 ("GSI4", RCPT, "2_LINE#{line_id:05d}", None)),
    ),
    KindSpec(
        "receipt_words", "RECEIPT_WORD",
        fields([IMAGE_ID], ids(("receipt_id", 1), ("line_id", 0), ("word_id", 0)), geometry(),
               [FieldSpec("embedding_status", s_enum(*EMBEDDING_STATUS), "NONE"),
                FieldSpec("is_noise", bool_value(), False),
                FieldSpec("extracted_data", receipt_word_extracted_data, None)]),
        sk="RECEIPT#{receipt_id:05d}#LINE#{line_id:05d}#WORD#{word_id:05d}",
        indexes=(("GSI1", "EMBEDDING_STATUS#{embedding_status}", "WORD#" + RCPT_WORD, None),
                 ("GSI2", "RECEIPT", RCPT_WORD, None),
                 ("GSI3", RCPT, "WORD", None),
                 ("GSI4", RCPT, "3_WORD#{line_id:05d}#{word_id:05d}", None)),
    ),
    KindSpec(
        "receipt_letters", "RECEIPT_LETTER",
        fields([IMAGE_ID], ids(("receipt_id", 1), ("line_id", 0), ("word_id", 0), ("letter_id", 0)),
               geometry(text=one_code_point)),
        sk="RECEIPT#{receipt_id:05d}#LINE#{line_id:05d}#WORD#{word_id:05d}#LETTER#{letter_id:05d}",
    ),
    KindSpec(
        "receipt_word_labels", "RECEIPT_WORD_LABEL",
        fields([IMAGE_ID], ids(("receipt_id", 1), ("line_id", 1), ("word_id", 1)),
               [FieldSpec("label", lambda v: KEY_ONLY),
                FieldSpec("reasoning", s_or_null(allow_empty=False)),
                FieldSpec("timestamp_added", timestamp_verbatim),
                FieldSpec("validation_status", s_enum(*VALIDATION_STATUS), None, none_as="NONE"),
                FieldSpec("label_consolidated_from", s_or_null(allow_empty=False), None),
                FieldSpec("label_proposed_by", s_or_null(allow_empty=False), None)]),
        sk="RECEIPT#{receipt_id:05d}#LINE#{line_id:05d}#WORD#{word_id:05d}#LABEL#{L}",
        indexes=(("GSI1", "{label_pad}", RCPT_WORD, None),
                 ("GSI2", "RECEIPT", RCPT_WORD, None),
                 ("GSI3", "VALIDATION_STATUS#{validation_status}", RCPT_WORD + "#LABEL#{L}", None),
                 ("GSI4", RCPT, "4_LABEL#{line_id:05d}#{word_id:05d}#{L}", None)),
        derive=derive_label,
    ),
    KindSpec(
        "receipt_places", "RECEIPT_PLACE",
        fields([FieldSpec("image_id", s_uuid),
                FieldSpec("receipt_id", n_int(1)),
                FieldSpec("place_id", place_id), FieldSpec("merchant_name", s_any),
                FieldSpec("validation_status", s_any, ""),
                FieldSpec("timestamp", datetime_iso()),
                FieldSpec("confidence", n_repr(0, 1), 0.0)],
               [FieldSpec(n, s_or_null_truthy, "") for n in (
                   "merchant_category", "formatted_address", "short_address", "phone_number",
                   "phone_intl", "website", "maps_url", "business_status", "plus_code",
                   "validated_by", "reasoning")],
               [FieldSpec("places_api_version", s_or_null_truthy, "v1")],
               [FieldSpec(n, string_list(as_set=False), []) for n in (
                   "merchant_types", "matched_fields", "hours_summary", "photo_references")],
               [FieldSpec(n, n_repr(missing=OMIT), None) for n in (
                   "latitude", "longitude", "viewport_ne_lat", "viewport_ne_lng",
                   "viewport_sw_lat", "viewport_sw_lng")],
               [FieldSpec("open_now", bool_value(missing=OMIT), None),
                FieldSpec("address_components", generic_map_or_omit, {}),
                FieldSpec("hours_data", generic_map_or_omit, {})]),
        sk="RECEIPT#{receipt_id:05d}#PLACE",
        indexes=(("GSI1", "MERCHANT#{merchant}", RCPT + "#PLACE", None),
                 ("GSI2", "PLACE#{place_id}", RCPT + "#PLACE", "place_id"),
                 ("GSI3", "PLACE_VALIDATION",
                  "CONFIDENCE#{conf4}#STATUS#{validation_status}#IMAGE#{image_id}", None),
                 ("GSI4", RCPT, "1_PLACE", None)),
        derive=derive_place,
    ),
    KindSpec(
        "receipt_metadatas", "RECEIPT_METADATA",
        fields([IMAGE_ID], ids(("receipt_id", 1)),
               [FieldSpec("place_id", s_any), FieldSpec("merchant_name", s_any),
                FieldSpec("matched_fields", string_list(as_set=True)),
                FieldSpec("timestamp", datetime_iso()),
                FieldSpec("validated_by", s_enum(*VALIDATION_METHOD), ""),
                FieldSpec("validation_status", s_enum(*MERCHANT_VALIDATION_STATUS), "")],
               [FieldSpec(n, s_or_null_truthy, "") for n in (
                   "merchant_category", "address", "phone_number", "reasoning",
                   "canonical_place_id", "canonical_merchant_name", "canonical_address",
                   "canonical_phone_number")]),
        sk="RECEIPT#{receipt_id:05d}#METADATA",
        indexes=(("GSI1", "MERCHANT#{merchant}", RCPT + "#METADATA", None),
                 ("GSI2", "PLACE#{place_id}", RCPT + "#METADATA", "place_id"),
                 ("GSI3", "MERCHANT_VALIDATION", "STATUS#{validation_status}", None)),
        derive=derive_metadata,
    ),
    KindSpec(
        "receipt_barcodes", "RECEIPT_BARCODE",
        fields([IMAGE_ID], ids(("receipt_id", 1), ("barcode_id", 0)), geometry(),
               [FieldSpec("symbology", s_nonempty)]),
        sk="RECEIPT#{receipt_id:05d}#BARCODE#{barcode_id:05d}",
        indexes=(("GSI3", RCPT, "BARCODE", None),
                 ("GSI4", RCPT, "6_BARCODE#{barcode_id:05d}", None)),
    ),
    KindSpec(
        "ocr_jobs", "OCR_JOB",
        fields([IMAGE_ID, FieldSpec("job_id", key_uuid),
                FieldSpec("s3_bucket", s_nonempty), FieldSpec("s3_key", s_nonempty),
                FieldSpec("created_at", datetime_iso()),
                FieldSpec("updated_at", datetime_iso(nullable=True), None),
                FieldSpec("status", s_enum(*OCR_STATUS), "PENDING"),
                FieldSpec("job_type", s_enum(*OCR_JOB_TYPE), "FIRST_PASS"),
                FieldSpec("receipt_id", n_int(1, nullable=True), None),
                FieldSpec("reocr_region", reocr_region, None),
                FieldSpec("reocr_reason", s_or_null(), None),
                FieldSpec("reocr_strategy", s_or_null(enum=REOCR_STRATEGY), None),
                FieldSpec("reocr_mechanism", s_or_null(allow_empty=False), None),
                FieldSpec("reocr_words_accepted", n_int(0, nullable=True), None),
                FieldSpec("reocr_words_rejected", n_int(0, nullable=True), None),
                FieldSpec("reocr_delta_before", n_repr(missing=NULL), None),
                FieldSpec("reocr_delta_after", n_repr(missing=NULL), None),
                FieldSpec("refine_summary", refine_summary, None),
                FieldSpec("refine_merchant_name", s_or_null(), None)]),
        sk="OCR_JOB#{job_id}",
        indexes=(("GSI1", "OCR_JOB_STATUS#{status}", "OCR_JOB#{job_id}", None),
                 ("GSI2", "OCR_JOB_STATUS#{status}", "OCR_JOB#{job_id}", None)),
    ),
    KindSpec(
        "ocr_routing_decisions", "OCR_ROUTING_DECISION",
        fields([IMAGE_ID, FieldSpec("job_id", key_uuid),
                FieldSpec("s3_bucket", s_nonempty), FieldSpec("s3_key", s_nonempty),
                FieldSpec("created_at", datetime_iso()),
                FieldSpec("updated_at", datetime_iso(nullable=True)),
                FieldSpec("receipt_count", n_int(0)),
                FieldSpec("status", s_enum(*OCR_STATUS), "PENDING")]),
        sk="ROUTING#{job_id}",
        indexes=(("GSI1", "OCR_ROUTING_DECISION_STATUS#{status}", "ROUTING#{job_id}", None),),
    ),
)


KINDS_BY_KEY = {k.export_key: k for k in KINDS}


KINDS_BY_TYPE = {k.type: k for k in KINDS}


# Export lists that hold kinds prod must never receive from a migration (ITEMS.md §7),
# and lists of entities that no longer exist (exports from before 2025-07-03).
NEVER_COPY_LISTS = {
    "compaction_runs": "COMPACTION_RUN",
    "compaction_locks": "COMPACTION_LOCK",
    "embedding_batch_results": "EMBEDDING_BATCH_RESULT",
    "jobs": "JOB",
    "job_metrics": "JOB_METRIC",
}


OBSOLETE_LISTS = frozenset({"word_tags", "receipt_word_tags"})


NEVER_COPY_TYPES = set(NEVER_COPY_LISTS.values())


# Key shapes of the never-copy kinds, for entries that carry keys but no TYPE.
NEVER_COPY_KEY_SHAPES = (
    ("COMPACTION_RUN", re.compile(r"RECEIPT#\d+#COMPACTION_RUN#"), "SK"),
    ("COMPACTION_LOCK", re.compile(r"LOCK#"), "PK"),
    ("EMBEDDING_BATCH_RESULT", re.compile(r"BATCH#"), "PK"),
    ("JOB_METRIC", re.compile(r"METRIC#"), "SK"),
    ("JOB", re.compile(r"JOB#"), "PK"),
)


@dataclasses.dataclass(frozen=True)
class Rules:
    """The migration rules of ITEMS.md §5: {dev bucket: prod bucket} per bucket kind."""
    raw_buckets: Mapping[str, str]
    cdn_buckets: Mapping[str, str]
    reset_embeddings: bool = True  # False only to rebuild a dev item as dev holds it

    @classmethod
    def from_config(cls, cfg: Config) -> Rules:
        def pair(dev: str | None, prod: str | None) -> dict[str, str]:
            return {dev: prod} if dev and prod else {}
        return cls(pair(cfg.dev_raw_bucket, cfg.prod_raw_bucket),
                   pair(cfg.dev_cdn_bucket, cfg.prod_cdn_bucket))


def rename_buckets(e: dict[str, Any], rules: Rules) -> None:
    """Image/Receipt: replace a bucket name only where it equals the configured dev name."""
    for name, renames in (("raw_s3_bucket", rules.raw_buckets), ("cdn_s3_bucket", rules.cdn_buckets)):
        if isinstance(e[name], str) and e[name] in renames:
            e[name] = renames[e[name]]


def reset_embedding(e: dict[str, Any], rules: Rules) -> None:
    """ReceiptLine/ReceiptWord: embeddings are recomputed in prod. GSI1PK follows the
    status because it is built from it, which is what the pipeline queries."""
    if e["embedding_status"] not in EMBEDDING_STATUS:
        raise InputError(f"{e['embedding_status']!r} is not one of {', '.join(EMBEDDING_STATUS)}",
                         field="embedding_status")
    if rules.reset_embeddings:
        e["embedding_status"] = "NONE"


MIGRATIONS: dict[str, tuple[Callable[[dict[str, Any], Rules], None], ...]] = {
    "images": (rename_buckets,),
    "receipts": (rename_buckets,),
    "receipt_lines": (reset_embedding,),
    "receipt_words": (reset_embedding,),
}


# DynamoDB limits (developer guide, "Service quotas"): keys and item size.
MAX_ITEM_BYTES = 400 * 1024


MAX_PARTITION_KEY_BYTES = 2048


MAX_SORT_KEY_BYTES = 1024


def complete_entity(kind: KindSpec, raw: dict[str, Any]) -> dict[str, Any]:
    """Check the field set like the entity's constructor and fill in class defaults."""
    if not kind.field_names.issuperset(raw):
        unknown = sorted(set(raw) - kind.field_names)
        raise InputError(f"unknown field (not in {kind.type}; it would be lost in prod)",
                         field=unknown[0])
    entity = {}
    for f in kind.fields:
        if f.name in raw:
            value = raw[f.name]
        elif f.default is REQUIRED:
            raise InputError("required field is missing", field=f.name)
        else:
            value = list(f.default) if isinstance(f.default, list) else f.default
        entity[f.name] = f.none_as if value is None and f.none_as is not None else value
    return entity


def build_item(kind: KindSpec, raw: dict[str, Any], rules: Rules) -> dict[str, AttributeValue]:
    """One exported entity -> the exact prod item (keys, index keys, attributes)."""
    entity = complete_entity(kind, raw)
    for rule in MIGRATIONS.get(kind.export_key, ()):
        rule(entity, rules)
    attributes: dict[str, AttributeValue] = {}
    for f in kind.fields:
        try:
            value = f.codec(entity[f.name])
        except FieldError as exc:
            raise InputError(str(exc), field=f.name) from None
        if value is not OMIT and value is not KEY_ONLY:
            attributes[f.name] = value
    values = {**entity, **kind.derive(entity)} if kind.derive else entity
    item: dict[str, AttributeValue] = {
        "PK": {"S": IMG.format_map(values)},
        "SK": {"S": kind.sk.format_map(values)},
    }
    for pk_name, sk_name, pk, sk, when in kind.index_keys:
        if when is None or values[when]:
            item[pk_name] = {"S": pk.format_map(values)}
            item[sk_name] = {"S": sk.format_map(values)}
    item["TYPE"] = {"S": kind.type}
    item.update(attributes)
    check_item_limits(item, kind)
    return item


KEY_ATTRIBUTES = ("PK", "SK", *(f"GSI{n}{k}" for n in range(1, 5) for k in ("PK", "SK")))


def check_item_limits(item: dict[str, AttributeValue], kind: KindSpec | None = None) -> None:
    """What DynamoDB would reject: text that is not Unicode, empty or oversized key
    strings, items over 400 KB."""
    try:
        check_key_and_size_limits(item, kind)
    except UnicodeEncodeError:  # a lone surrogate (valid JSON, not valid UTF-8)
        for name, value in item.items():
            try:
                value_size(value)
            except UnicodeEncodeError:
                raise InputError("text is not valid Unicode (lone surrogate escape)",
                                 field=name) from None
        raise


def check_key_and_size_limits(item: dict[str, AttributeValue], kind: KindSpec | None) -> None:
    for name in KEY_ATTRIBUTES:
        if name in item:
            text = item[name]["S"]
            limit = MAX_SORT_KEY_BYTES if name.endswith("SK") else MAX_PARTITION_KEY_BYTES
            if text == "":
                raise InputError(f"key attribute {name} would be an empty string", field=name)
            if len(text.encode("utf-8")) > limit:
                raise InputError(f"key attribute {name} is longer than {limit} bytes", field=name)
    # Fast path: measure what can grow, bound the rest; exact only near the limit.
    if kind and item_size(item, skip=kind.small_fields) + kind.small_bytes <= MAX_ITEM_BYTES:
        return
    size = item_size(item)
    if size > MAX_ITEM_BYTES:
        largest = max(item, key=lambda name: item_size({name: item[name]}))
        raise InputError(f"item is {size:,} bytes, over DynamoDB's 400 KB limit "
                         f"({item['SK']['S'][:60]})", field=largest)


# Item size, byte for byte as DynamoDB counts it against the 400 KB (409,600-byte) limit:
# the developer guide's rules ("DynamoDB item sizes and formats"), made exact where it says
# "approximately" by measuring DynamoDB Local 1.25.1 at the boundary (tests/test_item_rules.py):
#   name: UTF-8 bytes (top level and map keys alike); S: UTF-8 bytes; B: raw bytes;
#   BOOL, NULL: 1; L: 3 + per element (1 + size); M: 3 + per entry (key + 1 + size);
#   SS/BS: sum of the members' bytes; NS: sum of the members' number sizes;
#   N: 1 + one byte per base-100 digit pair, pairs aligned on the decimal point (so 1.1 and
#   123.456 take 2 and 4 pairs, not 1 and 3), leading/trailing zero pairs dropped (0 is 1,
#   1e20 and 10**30 are 2), plus 1 if negative unless the mantissa already has 20 pairs.
def item_size(item: Mapping[str, AttributeValue], skip: frozenset[str] = frozenset()) -> int:
    """Item size as DynamoDB counts it (see above)."""
    total = 0
    for name, v in item.items():  # top-level names are this tool's own ASCII names
        if name not in skip:
            text = v.get("S")
            total += len(name) + (len(text.encode("utf-8")) if text is not None else value_size(v))
    return total


def value_size(v: AttributeValue) -> int:
    (tag, x), = v.items()
    if tag == "S":
        return len(x.encode("utf-8"))
    if tag == "N":
        return number_size(x)
    if tag in ("BOOL", "NULL"):
        return 1
    if tag == "M":
        return 3 + sum(len(k.encode("utf-8")) + 1 + value_size(y) for k, y in x.items())
    if tag == "L":
        return 3 + sum(1 + value_size(y) for y in x)
    if tag == "SS":
        return sum(len(s.encode("utf-8")) for s in x)
    if tag == "NS":
        return sum(number_size(n) for n in x)
    if tag == "BS":
        return sum(len(b) for b in x)
    return len(x)  # B


def number_size(text: str) -> int:
    """Bytes of an N value (valid DynamoDB number text, e.g. -12.5, 1e+20, 1.5e-07)."""
    negative = text.startswith("-")
    mantissa, _, exponent = text.lstrip("+-").lower().partition("e")
    whole, _, fraction = mantissa.partition(".")
    digits = whole + fraction
    significant = digits.strip("0")
    if not significant:
        return 1  # zero
    first = len(digits) - len(digits.lstrip("0"))  # index of the first significant digit
    last = first + len(significant) - 1
    top = len(whole) - 1 + (int(exponent) if exponent else 0)  # power of ten of digits[0]
    pairs = (top - first) // 2 - (top - last) // 2 + 1
    return 1 + pairs + (negative and pairs < 20)


@dataclasses.dataclass
class ExportImage:
    """One image in export form, {entity list: [entity, ...]}, as read from its source. An
    item source also counts the partition's items of types no export holds (RECEIPT_SUMMARY,
    ...): they are never written, and the report counts them."""
    data: dict[str, Any]
    other_types: Counter[str] = dataclasses.field(default_factory=Counter)


@dataclasses.dataclass
class ConvertedImage:
    """Everything one image turns into; the IMAGE item comes last."""
    source: ImageSource
    image_id: str
    items: list[dict[str, AttributeValue]]
    entities: Counter[str]
    excluded: Counter[str]
    ignored: Counter[str]
    has_receipts: bool
    # items of types no export holds, found in the image's partition (item sources only)
    other_types: Counter[str] = dataclasses.field(default_factory=Counter)
    # the S3 objects its items point to where the rules rewrote the bucket (--copy-objects)
    objects: list[ObjectRef] = dataclasses.field(default_factory=list)


@dataclasses.dataclass(frozen=True)
class ObjectRef:
    """An object an item points to: copied from the dev bucket to the prod one, same key."""
    source: str   # the dev bucket
    target: str   # the prod bucket
    key: str

    def __str__(self) -> str:
        return f"s3://{self.source}/{self.key}"


def referenced_objects(kind: KindSpec, raw: Mapping[str, Any], rules: Rules) -> list[ObjectRef]:
    """Image and receipt entities: the raw upload (raw_s3_key) and the CDN variants (cdn_s3_key
    and its 11 siblings), for each bucket the rules rename (ITEMS.md §5); non-empty keys only."""
    if kind.export_key not in ("images", "receipts"):
        return []
    refs = []
    for bucket_field, renames, keys in (("raw_s3_bucket", rules.raw_buckets, ("raw_s3_key",)),
                                        ("cdn_s3_bucket", rules.cdn_buckets, CDN_KEYS)):
        bucket = raw.get(bucket_field)
        if isinstance(bucket, str) and bucket in renames:
            refs += [ObjectRef(bucket, renames[bucket], raw[k]) for k in keys
                     if isinstance(raw.get(k), str) and raw[k]]
    return refs


def nothing_of(source: ImageSource) -> ConvertedImage:
    """What the source has of an image to delete: no item."""
    return ConvertedImage(source, source.image_id, [], Counter(), Counter(), Counter(), True)


def never_copy_type(entry: Mapping[str, Any]) -> str | None:
    """The never-copy kind an entry is, judged by its TYPE or its key shape."""
    if "TYPE" not in entry and "PK" not in entry and "SK" not in entry:
        return None  # what the exporter writes: entity fields only
    t = entry.get("TYPE")
    if isinstance(t, str) and t in NEVER_COPY_TYPES:
        return t
    for name, pattern, key in NEVER_COPY_KEY_SHAPES:
        value = entry.get(key)
        if isinstance(value, str) and pattern.match(value):
            return name
    return None


def convert_image(source: ImageSource, image: ExportImage, rules: Rules,
                  ignore_unknown: bool) -> ConvertedImage:
    """Turn one image in export form into the items to write. Raises InputError."""
    data = image.data
    for key, entries in data.items():
        if not isinstance(entries, list):
            raise InputError(f"expected a list of entities, got {json_type(entries)}", entity=key)
    images = [e for e in data.get("images", []) if not (isinstance(e, dict) and never_copy_type(e))]
    if len(images) != 1 or not isinstance(images[0], dict):
        raise InputError(f"an export file holds exactly one image, found {len(images)}",
                         entity="images")
    image_id = images[0].get("image_id")
    if not isinstance(image_id, str) or not UUID_RE.fullmatch(image_id):
        raise InputError(f"not a version 4/5 UUID: {image_id!r}", entity="images", index=0,
                         field="image_id")
    if source.image_id != image_id:
        raise InputError(f"file name does not match image_id {image_id!r}", entity="images",
                         index=0, field="image_id")
    converted = ConvertedImage(source, image_id, [], Counter(), Counter(), Counter(),
                          bool(data.get("receipts")), Counter(image.other_types))
    seen: dict[tuple[str, str], tuple[str, int]] = {}
    image_item = None
    for key, entries in data.items():
        kind = KINDS_BY_KEY.get(key)
        if kind is None:
            if key in NEVER_COPY_LISTS or key in OBSOLETE_LISTS:
                converted.excluded[key] += len(entries)
            elif ignore_unknown:
                converted.ignored[key] += len(entries)
            else:
                raise InputError("unknown export list: its entities would be silently lost in "
                                 "prod (use --ignore-unknown to skip it)", entity=key)
            continue
        for index, raw in enumerate(entries):
            try:
                item = plan_entity(kind, raw, image_id, rules)
            except InputError as exc:
                exc.entity, exc.index = key, index
                raise
            if item is None:
                converted.excluded[never_copy_type(raw) or key] += 1
                continue
            pk_sk = (item["PK"]["S"], item["SK"]["S"])
            if pk_sk in seen:
                other = seen[pk_sk]
                raise InputError(f"duplicate item: same key as {other[0]}[{other[1]}] "
                                 f"(SK {pk_sk[1]})", entity=key, index=index)
            seen[pk_sk] = (key, index)
            converted.entities[key] += 1
            converted.objects += [r for r in referenced_objects(kind, raw, rules)
                                  if r not in converted.objects]
            if kind.type == "IMAGE":
                image_item = item
            else:
                converted.items.append(item)
    assert image_item is not None
    converted.items.append(image_item)
    return converted


def plan_entity(kind: KindSpec, raw: Any, image_id: str,
                rules: Rules) -> dict[str, AttributeValue] | None:
    """One export entry -> item; None for a never-copy entry."""
    if not isinstance(raw, dict):
        raise InputError(f"entity must be an object, got {json_type(raw)}")
    if never_copy_type(raw):
        return None
    if raw.get("TYPE") == kind.type:
        raw = {k: v for k, v in raw.items() if k != "TYPE"}
    if "image_id" in raw and raw["image_id"] != image_id:
        raise InputError(f"belongs to image {raw['image_id']!r}, not to this file's image",
                         field="image_id")
    return build_item(kind, raw, rules)


# --- items back into entities: the inverse of the spec (--source-table, --source-items) ---
# A dev item is read back into the entity it was built from, driven by the same KindSpec:
# attributes through one inverse of the attribute encoding (every codec takes the JSON
# value its output spells), key-only fields from the PK/SK templates, omitted attributes
# as the value their codec omits. The entity is then rebuilt with build_item (no renames)
# and must give the item back exactly: whatever the spec cannot express fails the image
# instead of being lost or altered on the way to prod.
IDENTITY_RULES = Rules({}, {}, reset_embeddings=False)


# Key template values that are not fields but spell one: the label lives in the keys as L.
KEY_VALUE_FIELDS = {"L": "label"}


ITEM_OWN_ATTRIBUTES = frozenset({"PK", "SK", "TYPE"})


NEVER_COPY_LIST_OF_TYPE = {t: key for key, t in NEVER_COPY_LISTS.items()}


INTEGER_TEXT = re.compile(r"-?\d+")


@functools.cache
def key_pattern(template: str) -> tuple[re.Pattern[str], frozenset[str]]:
    """A key template as a regex ({name:05d}: digits, {name}: text without '#') and the
    names that are integers."""
    parts, seen, ints = [], set(), set()
    for literal, name, spec, _ in Formatter().parse(template):
        parts.append(re.escape(literal))
        if name is not None:
            parts.append(f"(?P={name})" if name in seen else
                         f"(?P<{name}>{'[0-9]{5,}' if spec == '05d' else '[^#]+'})")
            seen.add(name)
            if spec == "05d":
                ints.add(name)
    return re.compile("".join(parts)), frozenset(ints)


def key_values(kind: KindSpec, item: Mapping[str, AttributeValue]) -> dict[str, Any]:
    """The values spelled in PK and SK ({receipt_id: 1, label: 'TOTAL', ...})."""
    values: dict[str, Any] = {}
    for name, template in (("PK", IMG), ("SK", kind.sk)):
        text = item[name].get("S") if isinstance(item.get(name), dict) else None
        pattern, ints = key_pattern(template)
        m = pattern.fullmatch(text) if isinstance(text, str) else None
        if m is None:
            raise InputError(f"{name} {text!r} does not have the shape {template} of {kind.type}",
                             field=name)
        for key, value in m.groupdict().items():
            values[KEY_VALUE_FIELDS.get(key, key)] = int(value) if key in ints else value
    return values


def attribute_value(v: Any) -> Any:
    """An AttributeValue as the JSON value the codecs take (N: int when integral text)."""
    if not isinstance(v, dict) or len(v) != 1:
        raise FieldError(f"not a DynamoDB attribute value: {v!r}")
    (tag, x), = v.items()
    if tag == "S" and isinstance(x, str):
        return x
    if tag == "N" and isinstance(x, str):
        try:
            return int(x) if INTEGER_TEXT.fullmatch(x) else float(Decimal(x))
        except (ArithmeticError, ValueError):
            raise FieldError(f"not a number: {x!r}") from None
    if tag == "NULL" and x is True:
        return None
    if tag == "BOOL" and isinstance(x, bool):
        return x
    if tag == "M" and isinstance(x, dict):
        return {k: attribute_value(y) for k, y in x.items()}
    if tag in ("L", "SS") and isinstance(x, list):
        return [attribute_value(y) for y in x] if tag == "L" else [str_value(s) for s in x]
    raise FieldError(f"no field of this tool is stored as {tag} ({json.dumps(v)[:80]})")


def null_value(f: FieldSpec) -> Any:
    """NULL is None, or the field's default where that writes NULL too (policy T's ''),
    which is what exports hold and what the spec's cross-field checks expect."""
    if f.default is not REQUIRED and f.default is not None:
        try:
            if f.codec(f.default) == NULL:
                return f.default
        except (FieldError, TypeError):
            pass
    return None


def omitted_value(f: FieldSpec) -> Any:
    """The value for which the field writes no attribute (REQUIRED: it always writes one)."""
    candidates: tuple[Any, ...] = (f.default, None, [], {})
    for candidate in candidates:
        if candidate is REQUIRED:
            continue
        try:
            if f.codec(candidate) is OMIT:
                return candidate
        except (FieldError, TypeError):
            continue
    return REQUIRED


def entity_from_item(kind: KindSpec, item: Mapping[str, AttributeValue]) -> dict[str, Any]:
    """One item of a known kind -> its entity; raises InputError naming the attribute.
    Strict: the entity must rebuild exactly this item (numbers compared as decimals)."""
    values = key_values(kind, item)
    known = ITEM_OWN_ATTRIBUTES | kind.field_names | {n for k in kind.index_keys for n in k[:2]}
    for name in item:
        if name not in known:
            raise InputError(f"attribute is not part of {kind.type} (it would be lost in prod)",
                             field=name)
    entity: dict[str, Any] = {}
    for f in kind.fields:
        if f.name in item:
            try:
                entity[f.name] = null_value(f) if item[f.name] == NULL else \
                    attribute_value(item[f.name])
            except FieldError as exc:
                raise InputError(str(exc), field=f.name) from None
        elif f.name in values:
            entity[f.name] = values[f.name]
        else:
            value = omitted_value(f)
            if value is REQUIRED:
                raise InputError(f"attribute is missing ({kind.type} always writes it)",
                                 field=f.name)
            entity[f.name] = value
    rebuilt = build_item(kind, entity, IDENTITY_RULES)
    for name in differing_attributes(rebuilt, item) if rebuilt != item else ():
        want = json.dumps(rebuilt.get(name), ensure_ascii=False)[:120]
        got = json.dumps(item.get(name), ensure_ascii=False)[:120]
        raise InputError(f"does not round-trip: the item holds {got}, its fields give {want}",
                         field=name)
    return entity


def image_from_items(items: Iterable[Mapping[str, Any]]) -> ExportImage:
    """One partition's items -> the image in export form. Entities are sorted by SK within
    their kind, kinds in spec order, so every item source gives the same order."""
    found: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    image = ExportImage({})
    data = image.data
    for item in items:
        pk, sk, item_type = (item.get(n, {}).get("S") if isinstance(item.get(n), dict) else None
                             for n in ("PK", "SK", "TYPE"))
        where = f"item (PK {pk}, SK {sk})"
        never = never_copy_type({"TYPE": item_type, "PK": pk, "SK": sk})
        if never:
            data.setdefault(NEVER_COPY_LIST_OF_TYPE[never], []).append({"TYPE": never})
            continue
        kind = KINDS_BY_TYPE.get(item_type) if isinstance(item_type, str) else None
        if kind is None:
            if not isinstance(item_type, str):
                raise InputError("item has no TYPE string attribute: its kind is unknown",
                                 entity=where, field="TYPE")
            image.other_types[item_type] += 1
            continue
        try:
            found.setdefault(kind.export_key, []).append((str(sk), entity_from_item(kind, item)))
        except InputError as exc:
            exc.entity = f"{kind.type} {where}"
            raise
    if "images" not in found:
        raise InputError("the partition has no IMAGE item: not an image this tool can copy "
                         f"({sum(len(v) for v in found.values())} item(s) of exported kinds, "
                         f"{sum(image.other_types.values())} of other types)", entity="images")
    for kind in KINDS:
        if kind.export_key in found:
            data[kind.export_key] = [e for _, e in sorted(found[kind.export_key],
                                                          key=lambda pair: pair[0])]
    return image


# =============================================================================
# 4. AWS requests: clients, the retry policy, batch writes
# =============================================================================


T = TypeVar("T")
R = TypeVar("R")
P = ParamSpec("P")
BATCH_SIZE = 25          # BatchWriteItem's limit
GET_BATCH_SIZE = 100     # BatchGetItem's limit
BACKOFF_BASE = 0.05      # seconds; full jitter: sleep uniform(0, min(cap, base * 2**attempt))
BACKOFF_CAP = 5.0


def make_client(cfg: Config, service: str = "dynamodb") -> Any:
    """One thread-safe client, its pool as large as the worker count. Retries belong to the
    Retrier below, not to botocore: --max-retries then bounds every request exactly, the
    backoff starts at DynamoDB's 50 ms (botocore's starts at 1 s), and no client-wide
    retry quota can run dry during a long throttled copy."""
    import boto3
    from botocore.config import Config as BotoConfig

    session: Any = boto3.Session(profile_name=cfg.profile, region_name=cfg.region)
    config = BotoConfig(
        retries={"mode": "standard", "total_max_attempts": 1},
        max_pool_connections=cfg.max_workers + 4,
        connect_timeout=10,
        read_timeout=60,
        # Every item is built and checked here (types, keys, sizes); botocore's pure-Python
        # re-validation of each attribute of each item would only cost CPU per request.
        parameter_validation=False,
    )
    endpoint = {"dynamodb": cfg.endpoint_url, "stepfunctions": cfg.sfn_endpoint_url,
                "sqs": cfg.sqs_endpoint_url, "s3": cfg.s3_endpoint_url}[service]
    client = session.client(service, endpoint_url=endpoint, config=config)
    if service == "dynamodb":
        PlainJsonBodies.install(client)
    return client


def client_region(cfg: Config, client: Any) -> tuple[str, str]:
    """The region a client actually uses and where it came from: --region, else what botocore
    found (AWS_DEFAULT_REGION before the profile's config file; it does not read AWS_REGION)."""
    region = str(client.meta.region_name)
    if cfg.region:
        return region, "given as --region"
    if os.environ.get("AWS_DEFAULT_REGION") == region:
        return region, "from environment AWS_DEFAULT_REGION"
    return region, "from the AWS config" + (f" of profile {cfg.profile}" if cfg.profile else "")


class PlainJsonBodies:
    """The body of a BatchWriteItem, made by json.dumps of its parameters.

    botocore's JSON serializer copies every attribute value of every item through a Python
    call per value before it dumps the copy: about a third of the client's CPU in a copy,
    on the same cores as the GIL every worker needs. For values that are plain JSON (the
    tool's items: strings, numbers as strings, booleans, lists and maps) that walk changes
    nothing, so the dump of the parameters is the same body byte for byte. A value that is
    not plain JSON (bytes of a B attribute) goes through botocore's serializer as before;
    so does every other operation. Headers, URL and signing stay botocore's.

    It replaces the client's private `_serializer`: botocore emits no event between the
    parameters' last hook (before-parameter-build, whose parameters the endpoint rules then
    read) and the serialization, so no supported hook can skip the walk. This class is the
    one place that leans on botocore's insides; tests/test_request_bodies.py fails when it
    no longer installs, or when its bodies differ from botocore's."""

    OPERATIONS = frozenset({"BatchWriteItem"})

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    @classmethod
    def install(cls, client: Any) -> None:
        inner = getattr(client, "_serializer", None)
        if inner is not None and hasattr(inner, "serialize_to_request"):
            client._serializer = cls(inner)

    def serialize_to_request(self, parameters: Mapping[str, Any], operation_model: Any) -> dict[str, Any]:
        if operation_model.name in self.OPERATIONS:
            try:
                body = json.dumps(parameters).encode("utf-8")
            except (TypeError, ValueError):  # not plain JSON: botocore knows how
                pass
            else:
                request: dict[str, Any] = self.inner.serialize_to_request({}, operation_model)
                request["body"] = body
                return request
        result: dict[str, Any] = self.inner.serialize_to_request(parameters, operation_model)
        return result


class CapacityMeter:
    """The capacity units the table reports for this run's reads and writes. A botocore
    hook asks for ReturnConsumedCapacity=TOTAL on every request that can report them,
    so no call site can forget it, and adds up what the responses say."""

    WRITES = frozenset({"BatchWriteItem", "PutItem", "UpdateItem", "DeleteItem", "TransactWriteItems"})

    def __init__(self) -> None:
        self.read_units = 0.0
        self.write_units = 0.0
        self.lock = threading.Lock()

    def attach(self, client: Any) -> None:
        client.meta.events.register("before-parameter-build.dynamodb", self.ask)
        client.meta.events.register("after-call.dynamodb", self.record)

    @staticmethod
    def ask(params: dict[str, Any], model: Any, **_: Any) -> None:
        shape = model.input_shape
        if shape is not None and "ReturnConsumedCapacity" in shape.members:
            params.setdefault("ReturnConsumedCapacity", "TOTAL")

    def record(self, parsed: Mapping[str, Any], model: Any, **_: Any) -> None:
        consumed = parsed.get("ConsumedCapacity") if isinstance(parsed, Mapping) else None
        if not consumed:
            return
        entries = consumed if isinstance(consumed, list) else [consumed]
        units = sum(float(c.get("CapacityUnits", 0)) for c in entries)
        with self.lock:
            if model.name in self.WRITES:
                self.write_units += units
            else:
                self.read_units += units

    def to_json(self) -> dict[str, float]:
        return {"write_units": round(self.write_units, 1), "read_units": round(self.read_units, 1)}


class RateLimiter:
    """A token bucket shared by all workers: at most `rate` items per second on average,
    bursts of at most one second's worth."""

    def __init__(self, rate: float, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.rate, self.clock, self.sleep = rate, clock, sleep
        self.capacity = max(rate, float(BATCH_SIZE))
        self.tokens = 0.0
        self.stamp = clock()
        self.lock = threading.Lock()

    def acquire(self, n: int) -> None:
        """Reserve n tokens, then sleep until they are earned. The reservation is made under
        the lock and the sleep outside it: callers queue by reservation, not by the lock."""
        with self.lock:
            now = self.clock()
            self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now
            self.tokens -= n
            wait = -self.tokens / self.rate if self.tokens < 0 else 0.0
        if wait > 0:
            self.sleep(wait)


THROTTLING_CODES = frozenset({
    "ProvisionedThroughputExceededException", "ThrottlingException", "Throttling",
    "RequestLimitExceeded", "TooManyRequestsException", "LimitExceededException",
    "RequestThrottled", "RequestThrottledException", "TransactionInProgressException",
})


def is_retryable(exc: BaseException) -> bool:
    """Throttling, 5xx, dropped connections, timeouts, corrupt responses: a put or a read
    can safely be sent again. Validation and permission errors cannot."""
    from botocore.exceptions import ChecksumError, ClientError, HTTPClientError
    from botocore.exceptions import ConnectionError as BotoConnectionError

    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        return error.get("Code") in THROTTLING_CODES or status >= 500
    return isinstance(exc, (BotoConnectionError, HTTPClientError, ChecksumError))


class RetriesExhausted(Exception):
    """A request still had unprocessed items or keys after its last retry."""


class Retrier:
    """The one retry policy of every request (--max-retries N): a request is sent at most
    1 + N times. It is sent again after a retryable error (throttling, 5xx, dropped
    connection) and for the items or keys the server left unprocessed, each time after
    exponential backoff with full jitter; a non-retryable error is raised at once."""

    def __init__(self, max_retries: int, sleep: Callable[[float], None] = time.sleep,
                 stop: threading.Event | None = None) -> None:
        self.max_retries, self.sleep, self.stop = max_retries, sleep, stop
        self.rng = random.Random()
        self.lock = threading.Lock()

    def wait(self, retry: int) -> None:
        with self.lock:
            delay = self.rng.uniform(0, min(BACKOFF_CAP, BACKOFF_BASE * 2 ** retry))
        if self.stop is None:
            self.sleep(delay)
        elif self.stop.wait(delay):  # a read-only operation being stopped: no more retries
            raise RetriesExhausted("stopped")

    def run(self, attempt: Callable[[], str | None]) -> None:
        """Call `attempt` until it returns None (all done). It returns what it left undone
        (said in words) or raises. After the last retry the error is raised, or, for work
        left undone, RetriesExhausted."""
        retries = 0
        while True:
            try:
                undone = attempt()
            except Exception as exc:
                if retries >= self.max_retries or not is_retryable(exc):
                    raise
                undone = describe_error(exc)
            if undone is None:
                return
            if retries >= self.max_retries:
                raise RetriesExhausted(f"{undone} after {self.max_retries} retries")
            retries += 1
            log.debug("retry %d: %s", retries, undone)
            self.wait(retries)

    def call(self, fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        """One request whose only failures are errors."""
        result: list[R] = []
        self.run(lambda: result.append(fn(*args, **kwargs)))  # append returns None: done
        return result[0]




class WriteError(Exception):
    """A request that still failed after every retry; `unwritten` are the items it lost.
    `refused` is the item the server refused as invalid, when one was singled out."""

    def __init__(self, message: str, unwritten: Sequence[dict[str, AttributeValue]] = (),
                 refused: dict[str, AttributeValue] | None = None, reason: str | None = None) -> None:
        super().__init__(message)
        self.unwritten = list(unwritten)
        self.refused = refused
        self.reason = reason or message  # the cause without this request's item count
        # every item refused in the request, each as its own error (one batch may mix images)
        self.refusals: list[WriteError] = [self] if refused is not None else []

    def input_error(self) -> InputError:
        """The report's view: the refused item's export list and key, else the message."""
        if self.refused is None:
            return InputError(str(self))
        kind = KINDS_BY_TYPE.get(self.refused.get("TYPE", {}).get("S", ""))
        return InputError(str(self), entity=kind.export_key if kind else None,
                          field=item_key(self.refused)[1])


class BatchWriter:
    """Writes up to 25 items with one BatchWriteItem (puts of whole items and deletes by key),
    re-sending UnprocessedItems with exponential backoff and full jitter until written or out
    of retries. A delete counts like a put for --max-items-per-second: every delete of a line,
    word, label, place or receipt is a compaction message in prod."""

    def __init__(self, client: DynamoDBClient, table: str, retrier: Retrier,
                 limiter: RateLimiter | None = None) -> None:
        self.client, self.table, self.retrier, self.limiter = client, table, retrier, limiter

    def write(self, items: Sequence[dict[str, AttributeValue]],
              deletes: Sequence[Mapping[str, AttributeValue]] = ()) -> None:
        """Put `items` and delete the items under the keys of `deletes` (any item of theirs:
        only PK and SK are sent). Raises WriteError naming how many were not written; its
        `unwritten` holds the items and the deletes lost."""
        n = len(items) + len(deletes)
        if not 0 < n <= BATCH_SIZE:
            raise ValueError(f"a batch holds 1..{BATCH_SIZE} items, not {n}")
        if len({item_key(i) for i in [*items, *deletes]}) != n:
            raise ValueError("a batch must not hold two writes of the same key")
        # The tool's items are plain DynamoDB JSON (AttributeValue), which the stubs spell as
        # TypedDicts: the request and what comes back are taken as DynamoDB gives them.
        self.send([{"PutRequest": {"Item": item}} for item in items]
                  + [{"DeleteRequest": {"Key": {"PK": d["PK"], "SK": d["SK"]}}} for d in deletes])

    def send(self, requests: Sequence[Any]) -> None:
        pending = requests

        def attempt() -> str | None:
            nonlocal pending
            if self.limiter:
                self.limiter.acquire(len(pending))
            response = self.client.batch_write_item(RequestItems={self.table: pending})
            pending = response.get("UnprocessedItems", {}).get(self.table, [])
            return f"{len(pending)} item(s) unprocessed (table throttled?)" if pending else None

        try:
            self.retrier.run(attempt)
        except RetriesExhausted as exc:
            raise WriteError(f"not written: {exc}", [request_item(p) for p in pending],
                             reason=f"still unprocessed after {self.retrier.max_retries} retries "
                                    "(table throttled?)") from None
        except Exception as exc:
            unwritten = [request_item(p) for p in pending]
            if not is_refusal(exc):
                raise WriteError(f"{len(unwritten)} item(s) not written: {describe_error(exc)}",
                                 unwritten, reason=describe_error(exc)) from None
            if len(unwritten) == 1:
                raise refusal_error(unwritten[0], describe_error(exc)) from None
            self.send_one_by_one(pending)

    def send_one_by_one(self, requests: Sequence[Any]) -> None:
        """The server refused a whole batch as invalid (a rule no check here foresaw): send
        its requests one at a time to single out the item it refuses, and name it."""
        failures = []
        for request in requests:
            try:
                self.send([request])
            except WriteError as exc:
                failures.append((request_item(request), exc))
        refusals = [exc for _, exc in failures if exc.refused is not None]
        if refusals:
            more = f" ({len(refusals) - 1} more item(s) of its batch refused too)" * (len(refusals) > 1)
            error = WriteError(f"{refusals[0]}{more}", [i for i, _ in failures], refusals[0].refused)
            error.refusals = refusals
            raise error
        if failures:
            raise WriteError(str(failures[0][1]), [i for i, _ in failures])


def request_item(request: Mapping[str, Any]) -> dict[str, AttributeValue]:
    """The item of a put request, the key of a delete request."""
    if "PutRequest" in request:
        return cast("dict[str, AttributeValue]", request["PutRequest"]["Item"])
    return cast("dict[str, AttributeValue]", request["DeleteRequest"]["Key"])


def is_refusal(exc: BaseException) -> bool:
    """The server refuses the request as invalid: sending it again cannot help."""
    response = getattr(exc, "response", None)
    return isinstance(response, dict) and response.get("Error", {}).get("Code") == "ValidationException"


def refusal_error(item: dict[str, AttributeValue], reason: str) -> WriteError:
    pk, sk = item_key(item)
    what = f"the {item['TYPE']['S']} item" if "TYPE" in item else "the delete of"
    return WriteError(f"DynamoDB refused {what} PK {pk}, SK {sk}: {reason}", [item], refused=item)


def item_key(item: Mapping[str, AttributeValue]) -> tuple[str, str]:
    return item["PK"]["S"], item["SK"]["S"]


def batches(items: Sequence[T], size: int = BATCH_SIZE) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


# =============================================================================
# 5. Sources: export files, the dev table, item exports; the selection
# =============================================================================


@dataclasses.dataclass(frozen=True)
class ImageSource:
    """One image to copy, wherever it is read from. `image_id` is what it is filed under
    (an export file's stem), `name` what messages call it (the file's name), and `read()`
    returns the image in export form, raising InputError (or OSError) when it cannot."""
    image_id: str
    name: str
    read: Callable[[], ExportImage]
    absent: str | None = None  # why the source does not hold this id (see missing)
    delete: bool = False       # a prod image the source lacks, to delete (--delete-missing)

    @classmethod
    def from_file(cls, path: Path) -> ImageSource:
        return cls(path.stem, path.name, lambda: ExportImage(read_export_file(path)))

    @classmethod
    def missing(cls, image_id: str, why: str) -> ImageSource:
        """An id --image-id/--image-ids-file names that the source does not hold: it fails
        as an image, so the operator sees it by name and the rest goes on."""
        return cls(image_id, image_id, functools.partial(raise_input_error, why), absent=why)


    @classmethod
    def to_delete(cls, image_id: str) -> ImageSource:
        """A prod image the source does not have: --delete-missing makes prod match the
        source's nothing (its items are never read from a source)."""
        return cls(image_id, f"IMAGE#{image_id} (not in the source)",
                   functools.partial(raise_input_error, "an image to delete has no source"),
                   delete=True)


def raise_input_error(message: str) -> ExportImage:
    raise InputError(message)


def sources_by_id(wanted: Sequence[str], held: Iterable[ImageSource], where: str) -> list[ImageSource]:
    """The sources of the wanted ids, matched in any case (like the shard hash: a UUID is the
    same id in any case), in the order asked. A source keeps its own spelling, the key its
    items have in prod. An id the source lacks fails as an image, named as missing."""
    by_id: dict[str, list[ImageSource]] = {}
    for held_source in held:
        by_id.setdefault(held_source.image_id.lower(), []).append(held_source)
    sources: list[ImageSource] = []
    for w in wanted:
        found = by_id.get(w.lower())
        sources += found or [ImageSource.missing(w, f"not in {where}")]
    return sources


def list_export_files(export_dir: Path) -> list[Path]:
    """Every entry of the export named like an image file (*.json, any case of the suffix),
    in name order. Entries that cannot be read (a directory, a FIFO, a dangling symlink)
    are listed too: read_export_file fails them, so the operator sees every image."""
    return sorted((p for p in export_dir.iterdir() if p.suffix.lower() == ".json"),
                  key=lambda p: p.name)


def reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not a valid JSON number")


def read_export_file(path: Path) -> dict[str, Any]:
    """Parse one export file into its top-level object (one image)."""
    if path.suffix != ".json" and os.path.lexists(path.with_suffix(".json")):
        raise InputError(f"{path.with_suffix('.json').name} is the same image: one file per image")
    raw = read_regular_file(path)
    if not raw.strip():
        raise InputError("file is empty")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"file is not valid UTF-8 (byte {exc.start})") from None
    try:
        data = json.loads(text, parse_constant=reject_constant)
    except json.JSONDecodeError as exc:
        raise InputError(f"invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg} "
                         "(truncated or corrupt file?)") from None
    except RecursionError:  # deeper than Python's parser goes, far deeper than DynamoDB's limit
        raise nesting_error(text) from None
    except ValueError as exc:  # NaN / Infinity
        raise InputError(f"invalid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise InputError(f"top level must be a JSON object of entity lists, not {json_type(data)}")
    return data


def read_regular_file(path: Path) -> bytes:
    """The file's bytes; InputError naming what the entry is when it is no file. Checked by
    stat before opening (opening a FIFO would block), and again on the open descriptor."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        if path.is_symlink():
            raise InputError(f"dangling symlink (points to {os.readlink(path)!r})") from None
        raise InputError("file vanished before it was read") from None
    check_regular(mode)
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    with os.fdopen(fd, "rb") as f:
        check_regular(os.fstat(fd).st_mode)
        return f.read()


def check_regular(mode: int) -> None:
    if stat.S_ISREG(mode):
        return
    kinds = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
             (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
             (stat.S_ISBLK, "a block device"))
    what = next((name for test, name in kinds if test(mode)), "not a regular file")
    raise InputError(f"not a regular file: {what}")


def nesting_error(text: str) -> InputError:
    """Where a document too deep for Python's JSON parser is: a named field, found by an
    iterative scan (recursion is what failed). DynamoDB refuses such a value anyway."""
    path: list[Any] = []  # per open container: its current key (object) or index (array)
    want_key = False
    limit = 3 + MAX_NESTING_DEPTH  # file object, entity list, entity, then the field's value
    i, n = 0, len(text)
    while i < n and len(path) <= limit:
        c = text[i]
        if c == '"':
            end = i + 1
            while end < n and text[end] != '"':
                end += 2 if text[end] == "\\" else 1
            if want_key:
                path[-1], want_key = json.loads(text[i:end + 1]), False
            i = end
        elif c in "[{":
            path.append(0 if c == "[" else "")
            want_key = c == "{"
        elif c in "]}" and path:
            path.pop()
        elif c == "," and path:
            if isinstance(path[-1], int):
                path[-1] += 1
            else:
                want_key = True
        i += 1
    entity, index, field = (path + [None] * 3)[:3]
    return InputError(f"nested deeper than DynamoDB's {MAX_NESTING_DEPTH + 1} levels",
                      entity if isinstance(entity, str) else None,
                      index if isinstance(index, int) else None,
                      field if isinstance(field, str) else None)


# --- other sources: the dev table itself, DynamoDB JSON items ---------
# Both give ImageSources whose read() returns the image in export form (entities read
# back from items by the spec's inverse, section 3), so everything after reading is the
# path of an export file: same checks, rules, diff and writes, byte-identical items.
class ReadOnlyTable:
    """The dev table (and prod's reads of whole partitions and of its image list, through
    ProdTable). Only Query and Scan are ever sent: nothing here can write."""

    def __init__(self, client: DynamoDBClient, table: str, retrier: Retrier) -> None:
        self.client, self.table, self.retrier = client, table, retrier

    def pages(self, operation: str, **kwargs: Any) -> Iterator[Mapping[str, Any]]:
        kwargs["TableName"] = self.table
        while True:
            page: Mapping[str, Any] = (self.retrier.call(self.client.query, **kwargs)
                                       if operation == "query" else
                                       self.retrier.call(self.client.scan, **kwargs))
            yield page
            if not page.get("LastEvaluatedKey"):
                return
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    def image_ids(self) -> list[str]:
        """Every image of the table: its IMAGE items, through GSITYPE or, where the table
        has no such index, a Scan."""
        from botocore.exceptions import ClientError

        names = {"#t": "TYPE", "#pk": "PK", "#sk": "SK"}
        values = {":image": {"S": "IMAGE"}}
        try:
            pages = list(self.pages("query", IndexName="GSITYPE", KeyConditionExpression="#t = :image",
                                    ProjectionExpression="#pk, #sk", ExpressionAttributeNames=names,
                                    ExpressionAttributeValues=values))
        except ClientError as exc:
            error = exc.response.get("Error", {})
            if error.get("Code") not in ("ValidationException", "ResourceNotFoundException") or \
                    "index" not in str(error.get("Message", "")).lower():
                raise  # anything but "no such index" (AWS: ValidationException; moto: not found)
            log.info("%s has no GSITYPE index: scanning it for IMAGE items", self.table)
            pages = list(self.pages("scan", FilterExpression="#t = :image AND #sk = :image",
                                    ProjectionExpression="#pk, #sk", ExpressionAttributeNames=names,
                                    ExpressionAttributeValues=values))
        ids = {item["PK"]["S"][len("IMAGE#"):] for page in pages for item in page.get("Items", [])
               if item.get("SK", {}).get("S") == "IMAGE" and item["PK"]["S"].startswith("IMAGE#")}
        return sorted(ids)

    def spelling(self, image_id: str) -> str:
        """The spelling the table files an id under (its PK is case-sensitive). Ids are written
        in lower case (str(uuid4())), so a lower-case id is taken as it is, with no request;
        any other is looked up lower-cased, then as given (one Limit=1 Query each)."""
        lower = image_id.lower()
        if image_id == lower:
            return image_id
        for candidate in (lower, image_id):
            page = self.retrier.call(self.client.query, TableName=self.table, Limit=1,
                                     KeyConditionExpression="PK = :pk", ProjectionExpression="PK",
                                     ExpressionAttributeValues={":pk": {"S": f"IMAGE#{candidate}"}})
            if page.get("Items"):
                return candidate
        return lower

    def partition_holds(self, image_id: str) -> bool:
        """Whether any item is under IMAGE#id: one strongly consistent Query, Limit=1."""
        page = self.retrier.call(self.client.query, TableName=self.table, Limit=1, ConsistentRead=True,
                                 KeyConditionExpression="PK = :pk", ProjectionExpression="PK",
                                 ExpressionAttributeValues={":pk": {"S": f"IMAGE#{image_id}"}})
        return bool(page.get("Items"))

    def partition(self, image_id: str) -> list[dict[str, AttributeValue]]:
        """Every item of one image."""
        return self.partition_items(f"IMAGE#{image_id}")

    def partition_items(self, pk: str) -> list[dict[str, AttributeValue]]:
        """Every item under one PK: one paginated, strongly consistent Query."""
        return [cast("dict[str, AttributeValue]", item)
                for page in self.pages("query", KeyConditionExpression="PK = :pk",
                                       ExpressionAttributeValues={":pk": {"S": pk}}, ConsistentRead=True)
                for item in page.get("Items", [])]


def table_sources(cfg: Config) -> list[ImageSource]:
    """--source-table: the given images, or every image of the dev table."""
    table = source_table(cfg)
    with errors_as(UsageError, f"cannot list the images of source table {cfg.source_table}"):
        ids = (tuple(table.image_ids()) if cfg.image_ids is None
               else tuple(dict.fromkeys(map(table.spelling, cfg.image_ids))))
    return [ImageSource(i, f"{cfg.source_table}/IMAGE#{i}",
                        functools.partial(read_partition, table.partition, i, table.table))
            for i in ids]


def source_table(cfg: Config) -> ReadOnlyTable:
    """--source-table, read with its own region, profile and endpoint where given."""
    assert cfg.source_table
    connection = dataclasses.replace(cfg, region=cfg.source_region or cfg.region,
                                     profile=cfg.source_profile or cfg.profile,
                                     endpoint_url=cfg.source_endpoint_url or cfg.endpoint_url)
    return ReadOnlyTable(make_client(connection), cfg.source_table, Retrier(cfg.max_retries))


def read_partition(fetch: Callable[[str], list[dict[str, AttributeValue]]], image_id: str,
                   where: str) -> ExportImage:
    """One image of an item source (the dev table, an item export) in export form."""
    items = fetch(image_id)
    if not items:
        raise InputError(f"no items under PK IMAGE#{image_id} in {where}")
    return image_from_items(items)


@dataclasses.dataclass(frozen=True)
class ItemFiles:
    """Where --source-items reads: its data files, and the item count a manifest promises."""
    files: tuple[Path, ...]
    item_count: int | None = None


ITEM_FILE_SUFFIXES = (".jsonl", ".jsonl.gz", ".json.gz")


def item_files(path: Path) -> ItemFiles:
    """A .jsonl(.gz) file, or a downloaded export-to-S3 folder (manifest-summary.json,
    data/*.json.gz; the manifest may also be in one folder below PATH)."""
    if path.is_file():
        if not path.name.endswith(ITEM_FILE_SUFFIXES):
            raise UsageError(f"--source-items {path}: expected a {'/'.join(ITEM_FILE_SUFFIXES)} file "
                             "or an export-to-S3 folder")
        return ItemFiles((path,))
    if not path.is_dir():
        raise UsageError(f"--source-items {path}: no such file or folder")
    manifests = [path / "manifest-summary.json"] if (path / "manifest-summary.json").is_file() \
        else sorted(path.rglob("manifest-summary.json"))
    if len(manifests) != 1:
        raise UsageError(f"--source-items {path}: expected one DynamoDB export (manifest-summary.json), "
                         f"found {len(manifests)}")
    folder = manifests[0].parent
    try:
        summary = json.loads(manifests[0].read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read {manifests[0]}: {exc}") from None
    if not isinstance(summary, dict):
        raise UsageError(f"{manifests[0]}: not a JSON object")
    fmt = summary.get("outputFormat", "DYNAMODB_JSON")
    if fmt != "DYNAMODB_JSON":
        raise UsageError(f"{manifests[0]}: the export is in {fmt} format; this tool reads "
                         "DYNAMODB_JSON only (export the table again with --export-format DYNAMODB_JSON)")
    if summary.get("exportType", "FULL_EXPORT") != "FULL_EXPORT":
        raise UsageError(f"{manifests[0]}: an {summary['exportType']} holds changes, not the "
                         "table's items: use a full export")
    files = sorted((folder / "data").glob("*.json.gz"))
    listed = manifest_data_files(folder)
    if listed is not None:
        missing = [name for name in listed if not (folder / "data" / name).is_file()]
        if missing:
            raise UsageError(f"{folder}: data files listed in manifest-files.json are missing "
                             f"(incomplete download?): {', '.join(missing[:5])}")
        files = [folder / "data" / name for name in listed]
    count = summary.get("itemCount")
    return ItemFiles(tuple(files), count if isinstance(count, int) else None)


def manifest_data_files(folder: Path) -> list[str] | None:
    """The data file names manifest-files.json lists (one JSON object a line), if present."""
    path = folder / "manifest-files.json"
    if not path.is_file():
        return None
    names = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                key = json.loads(line)["dataFileS3Key"]
            except (ValueError, KeyError, TypeError):
                raise UsageError(f"{path} line {n}: no dataFileS3Key") from None
            names.append(str(key).rsplit("/", 1)[-1])
    return names


def item_lines(path: Path) -> Iterator[str]:
    with (gzip.open(path, "rt", encoding="utf-8") if path.name.endswith(".gz")
          else path.open(encoding="utf-8")) as f:
        yield from f


def parse_item_line(line: str) -> dict[str, Any]:
    """One line: an item in DynamoDB JSON, or {"Item": item} as an export to S3 writes it."""
    data = json.loads(line, parse_constant=reject_constant)
    if isinstance(data, dict) and set(data) == {"Item"}:
        data = data["Item"]
    if not isinstance(data, dict):
        raise ValueError(f"expected an item object, got {json_type(data)}")
    return data


class SpilledItems:
    """Items of an export, grouped by image partition on disk in one pass (an SQLite file
    in a temporary folder), so memory holds one image however large the export is and
    however its items are spread over files."""

    def __init__(self, source: ItemFiles) -> None:
        try:
            import sqlite3
        except ImportError:  # a Python built without it (e.g. no libsqlite3 when compiled)
            raise UsageError("--source-items needs Python's sqlite3 module, which this Python "
                             "lacks") from None
        folder = tempfile.mkdtemp(prefix="copy-items-")
        self.db = sqlite3.connect(str(Path(folder) / "items.sqlite"), check_same_thread=False)
        weakref.finalize(self, remove_spill, self.db, folder)
        self.lock = threading.Lock()
        self.outside: Counter[str] = Counter()
        self.db.execute("PRAGMA journal_mode = OFF")
        self.db.execute("PRAGMA synchronous = OFF")
        self.db.execute("CREATE TABLE items (image_id TEXT, line TEXT)")
        total = sum(self.spill(path) for path in source.files)
        if source.item_count is not None and total != source.item_count:
            raise UsageError(f"the export's manifest counts {source.item_count:,} items, its data "
                             f"files hold {total:,} (incomplete download?)")
        self.db.execute("CREATE INDEX by_image ON items (image_id)")
        self.db.commit()
        if self.outside:
            log.info("items outside image partitions (not read): %s",
                     ", ".join(f"{t} {n:,}" for t, n in sorted(self.outside.items())))

    def spill(self, path: Path) -> int:
        """Append one data file's image items to the store; returns how many items it holds."""
        rows: list[tuple[str, str]] = []
        items = n = 0
        try:
            for n, line in enumerate(item_lines(path), 1):
                if not line.strip():
                    continue
                try:
                    item = parse_item_line(line)
                    pk = item["PK"]["S"]
                    if not isinstance(pk, str):
                        raise TypeError("PK is not a string")
                except (ValueError, KeyError, TypeError) as exc:
                    raise UsageError(f"{path} line {n}: not a DynamoDB JSON item with a PK "
                                     f"string ({exc})") from None
                items += 1
                if pk.startswith("IMAGE#"):
                    rows.append((pk[len("IMAGE#"):], line))
                else:
                    t = item.get("TYPE")
                    self.outside[t.get("S", "?") if isinstance(t, dict) else "?"] += 1
                if len(rows) >= 1000:
                    self.db.executemany("INSERT INTO items VALUES (?, ?)", rows)
                    rows.clear()
        except (OSError, EOFError, UnicodeDecodeError, zlib.error) as exc:
            raise UsageError(f"cannot read {path} (line {n + 1}): {exc}") from None
        self.db.executemany("INSERT INTO items VALUES (?, ?)", rows)
        return items

    def image_ids(self) -> list[str]:
        with self.lock:
            return [r[0] for r in self.db.execute("SELECT DISTINCT image_id FROM items ORDER BY image_id")]

    def items(self, image_id: str) -> list[dict[str, Any]]:
        with self.lock:
            lines = [r[0] for r in self.db.execute(
                "SELECT line FROM items WHERE image_id = ? ORDER BY rowid", (image_id,))]
        return [parse_item_line(line) for line in lines]


def remove_spill(db: Any, folder: str) -> None:
    db.close()
    shutil.rmtree(folder, ignore_errors=True)


@functools.lru_cache(maxsize=1)
def spilled_items(path: Path) -> SpilledItems:
    """One pass per run, however often the run asks for the sources (copy, then --verify)."""
    return SpilledItems(item_files(path))


def items_sources(cfg: Config) -> list[ImageSource]:
    """--source-items: the given images, or every image partition of the export."""
    assert cfg.source_items
    spill = spilled_items(cfg.source_items)
    sources = [ImageSource(i, f"{cfg.source_items.name}/IMAGE#{i}",
                           functools.partial(read_partition, spill.items, i, "the item export"))
               for i in spill.image_ids()]
    if cfg.image_ids is None:
        return sources
    return sources_by_id(cfg.image_ids, sources, f"the item export {cfg.source_items}")


def shard_of(image_id: str, shards: int) -> int:
    """Stable across machines and Python versions (no hash randomisation)."""
    return zlib.crc32(image_id.lower().encode("utf-8")) % shards


def select_sources(cfg: Config) -> list[ImageSource]:
    """The images this run handles: every export file (or the dev table's images, or an
    item export's: --source-table/--source-items), those --image-id/--image-ids-file name,
    or those of its --shard."""
    if cfg.source_table:
        sources = table_sources(cfg)
    elif cfg.source_items:
        sources = items_sources(cfg)
    else:
        files = list_export_files(cfg.export_dir) if cfg.export_dir.is_dir() else []
        sources = [ImageSource.from_file(f) for f in files]
        if cfg.image_ids is not None:  # export files are named <image_id>.json, in its spelling
            sources = sources_by_id(cfg.image_ids, sources, f"the export {cfg.export_dir}")
    if cfg.shard:
        k, n = cfg.shard
        sources = [s for s in sources if shard_of(s.image_id, n) == k]
    return sources


def deletion_sources(cfg: Config, prod: ProdTable | None,
                     sources: Sequence[ImageSource]) -> list[ImageSource]:
    """--delete-missing: the prod images the source does not have. Listed with
    --delete-image-ids, checked against the whole source (not only the selection): an id the
    source has is refused. Else the source is the whole dev table (check_mirror_config) and
    every image prod holds that it lacks is deleted."""
    if not cfg.delete_missing:
        return []
    assert prod is not None  # check_mirror_config: --delete-missing needs the table
    if cfg.delete_image_ids is not None:
        whole = set(map(str.lower, source_image_ids(cfg)))
        held = [i for i in cfg.delete_image_ids if i.lower() in whole]
        if held:
            raise UsageError(f"--delete-image-ids lists {plural(len(held), 'image')} the source has "
                             f"({', '.join(held[:5])}{', ...' if len(held) > 5 else ''}): refusing "
                             "to delete them")
        return [ImageSource.to_delete(i) for i in cfg.delete_image_ids]
    with errors_as(UsageError, f"cannot list the images of the prod table {cfg.table}"):
        in_prod = prod.image_ids()
    ours = {s.image_id.lower() for s in sources}
    candidates = [i for i in in_prod if i.lower() not in ours]
    # GSITYPE is eventually consistent, and an image dev is re-writing has no IMAGE item for
    # a while: an image is "missing" only if its dev partition is empty when read consistently.
    dev = source_table(cfg)
    with errors_as(UsageError, f"cannot read the source table {cfg.source_table}"):
        held = [i for i in candidates if dev.partition_holds(i)]
    for i in held:
        log.warning("IMAGE#%s: not listed in %s, but its partition there holds items (being "
                    "re-written?): not deleted", i, cfg.source_table)
    return [ImageSource.to_delete(i) for i in candidates if i not in held]


def source_image_ids(cfg: Config) -> list[str]:
    """Every image id of the source, whatever the selection."""
    whole = dataclasses.replace(cfg, image_ids=None, shard=None)
    return [s.image_id for s in select_sources(whole)]


# =============================================================================
# 6. The prod table
# =============================================================================


# The kinds the embedding pipeline embeds and their GSI1SK prefix (its submit's query).
EMBEDDED_KINDS = {"lines": "LINE#", "words": "WORD#"}


@dataclasses.dataclass
class RowCounts:
    """Receipt lines and words by embedding status. Noise rows (is_noise) stay NONE, never
    claimed, so they are counted apart and never keep a wave waiting; FAILED rows are not
    waited for either (the pipeline gave up on them)."""
    none: int = 0       # NONE, not noise: not yet claimed by a submit
    pending: int = 0    # claimed, not yet merged by an ingest
    done: int = 0       # SUCCESS
    noise: int = 0      # NONE and is_noise

    def add(self, status: str, rows: int, noise: int = 0) -> None:
        field = {"NONE": "none", "PENDING": "pending", "SUCCESS": "done"}[status]
        setattr(self, field, getattr(self, field) + rows)
        self.noise += noise

    def add_counts(self, other: RowCounts) -> None:
        for field in ("none", "pending", "done", "noise"):
            setattr(self, field, getattr(self, field) + getattr(other, field))

    @property
    def in_flight(self) -> int:
        return self.none + self.pending

    def waiting(self, wave_done: str) -> int:
        """Rows that keep a wave from being done: NONE for executions and claimed (a wave whose
        rows no submit claimed yet, e.g. stopped before its workflows, is not done), NONE and
        PENDING for embedded."""
        return self.in_flight if wave_done == "embedded" else self.none

    def text(self) -> str:
        return (f"rows NONE {self.none:,}, PENDING {self.pending:,}, done {self.done:,}"
                + (f" (noise {self.noise:,})" if self.noise else ""))

    def to_json(self) -> dict[str, int]:
        return dataclasses.asdict(self)


class ProdTable:
    """The prod table: the only code that reads or writes it. One client, whose every request
    reports its capacity units to one meter; one retry policy (--max-retries); one rate
    limiter for writes (--max-items-per-second). Writes are puts of whole items and deletes by
    key, in batches (BatchWriter); nothing here updates an attribute in place."""

    def __init__(self, cfg: Config, client: Any = None) -> None:
        self.name = cfg.table or ""
        self.endpoint = cfg.endpoint_url
        self.client: DynamoDBClient = client if client is not None else make_client(cfg)
        self.capacity = CapacityMeter()
        self.capacity.attach(self.client)
        # Set by a read-only operation being stopped: its reads give up their retries at once.
        # A copy never sets it: its in-flight batches finish with every retry they need.
        self.stop = threading.Event()
        self.retrier = Retrier(cfg.max_retries, stop=self.stop)
        limiter = RateLimiter(cfg.max_items_per_second) if cfg.max_items_per_second else None
        self.writer = BatchWriter(self.client, self.name, self.retrier, limiter)

    def where(self) -> str:
        return self.endpoint or f"region {self.client.meta.region_name}"

    def check_readable(self, origin: str) -> None:
        """One DescribeTable before any work: a missing table, an unreachable endpoint or
        missing permissions is one line and exit 2, not one failure per image after all
        retries. `origin` says where the table's name came from."""
        from botocore.exceptions import ClientError

        with errors_as(UsageError, f"cannot reach DynamoDB at {self.where()}"):
            try:
                table = self.retrier.call(self.client.describe_table, TableName=self.name)["Table"]
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") == "ResourceNotFoundException":
                    raise UsageError(f"table {self.name!r} ({origin}) not found at {self.where()}") from None
                raise UsageError(f"cannot read table {self.name!r} at {self.where()}: "
                                 f"{describe_error(exc)}") from None
        keys = {k.get("AttributeName"): k.get("KeyType") for k in table.get("KeySchema", [])}
        if keys != {"PK": "HASH", "SK": "RANGE"}:
            raise UsageError(f"table {self.name!r} at {self.where()} has the key schema {keys}, not "
                             "the receipts table's PK (hash) and SK (range)")

    def images_present(self, image_ids: Sequence[str]) -> set[str]:
        """Which of these images have their IMAGE item in prod (100 keys a request)."""
        keys = [{"PK": {"S": f"IMAGE#{i}"}, "SK": {"S": "IMAGE"}} for i in dict.fromkeys(image_ids)]
        found = itertools.chain.from_iterable(
            self.read_keys(chunk, projection="PK") for chunk in batches(keys, GET_BATCH_SIZE))
        return {item["PK"]["S"][len("IMAGE#"):] for item in found}

    def partition_is_empty(self, pk: str) -> bool:
        """Whether prod holds no item at all under this partition key: one strongly consistent
        Query that stops at the first item (--check-partitions)."""
        response = self.retrier.call(self.client.query, TableName=self.name,
                                     KeyConditionExpression="PK = :pk",
                                     ExpressionAttributeValues={":pk": {"S": pk}}, Limit=1,
                                     ConsistentRead=True, ProjectionExpression="PK")
        return not response.get("Items")

    def read_keys(self, keys: Sequence[Mapping[str, AttributeValue]],
                  projection: str | None = None) -> list[dict[str, AttributeValue]]:
        """Prod's items under up to 100 keys: one strongly consistent BatchGetItem, its
        UnprocessedKeys asked again under the retry policy, like any resend."""
        request: dict[str, Any] = {"Keys": list(keys), "ConsistentRead": True}
        if projection:
            request["ProjectionExpression"] = projection
        found: list[dict[str, AttributeValue]] = []
        pending: dict[str, Any] = {self.name: request}

        def attempt() -> str | None:
            nonlocal pending
            response = self.client.batch_get_item(RequestItems=pending)
            found.extend(cast("list[dict[str, AttributeValue]]",
                              response.get("Responses", {}).get(self.name, [])))
            pending = response.get("UnprocessedKeys") or {}
            return f"{len(pending[self.name]['Keys'])} key(s) unprocessed" if pending else None

        self.retrier.run(attempt)
        return found

    def read_versions(self, items: Sequence[Mapping[str, AttributeValue]]
                      ) -> dict[str, dict[str, AttributeValue]]:
        """What prod holds under the keys of these items (one image's), by SK. These keys are
        all a diff needs: reading the whole partition would page through items it never
        looks at."""
        keys = [{"PK": i["PK"], "SK": i["SK"]} for i in items]
        return {item["SK"]["S"]: item for chunk in batches(keys, GET_BATCH_SIZE)
                for item in self.read_keys(chunk)}

    def write(self, items: Sequence[dict[str, AttributeValue]],
              deletes: Sequence[Mapping[str, AttributeValue]] = ()) -> None:
        """Put items and delete keys, up to 25 together (one BatchWriteItem and its resends);
        raises WriteError."""
        self.writer.write(items, deletes)

    def partition(self, pk: str) -> list[dict[str, AttributeValue]]:
        """Every item under one partition key (an image's): a paginated, strongly consistent
        Query. A mirror needs what prod holds that the source does not, so it reads it all."""
        return ReadOnlyTable(self.client, self.name, self.retrier).partition_items(pk)

    def image_ids(self) -> list[str]:
        """Every image prod holds (its IMAGE items, through GSITYPE): what --delete-missing
        compares with the source."""
        return ReadOnlyTable(self.client, self.name, self.retrier).image_ids()

    def count_waiting(self, image_ids: Sequence[str] | None = None) -> dict[str, int]:
        """Receipt lines/words still NONE (noise included: --status shows what the table holds),
        counted with the embedding pipeline's own GSI1 query (never a scan); restricted to some
        images by a longer GSI1SK prefix."""
        counts = {}
        for kind, prefix in EMBEDDED_KINDS.items():
            prefixes = [f"{prefix}IMAGE#{i}#" for i in image_ids] if image_ids is not None else [prefix]
            counts[kind] = sum(self.count_status("NONE", p)[0] for p in prefixes)
        return counts

    def count_status(self, status: str, sk_prefix: str, noise: bool = False) -> tuple[int, int]:
        """(rows, noise rows) of one embedding status under a GSI1SK prefix. Rows marked
        is_noise are never claimed by the pipeline's submit, so they stay NONE forever: with
        `noise`, the filter counts them apart (ScannedCount is before the filter)."""
        kwargs: dict[str, Any] = {
            "TableName": self.name, "IndexName": "GSI1", "Select": "COUNT",
            "KeyConditionExpression": "GSI1PK = :pk AND begins_with(GSI1SK, :sk)",
            "ExpressionAttributeValues": {":pk": {"S": f"EMBEDDING_STATUS#{status}"},
                                          ":sk": {"S": sk_prefix}},
        }
        if noise:
            kwargs["FilterExpression"] = "attribute_not_exists(is_noise) OR is_noise <> :noise"
            kwargs["ExpressionAttributeValues"][":noise"] = {"BOOL": True}
        rows = scanned = 0
        while True:
            page = self.retrier.call(self.client.query, **kwargs)
            rows += page.get("Count", 0)
            scanned += page.get("ScannedCount", page.get("Count", 0))
            if "LastEvaluatedKey" not in page:
                return rows, scanned - rows
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    def row_counts(self, image_ids: Sequence[str] | None = None, workers: int = 1,
                   done: bool = True) -> RowCounts:
        """Where the receipt lines and words of some images (None: the whole table) stand in the
        embedding pipeline. Without `done`, SUCCESS rows are not counted: a COUNT query still
        reads every row it counts, and the decisions need only NONE and PENDING."""
        counts = RowCounts()
        for image_counts in self.rows_by_image(image_ids, workers, done).values():
            counts.add_counts(image_counts)
        return counts

    def rows_by_image(self, image_ids: Sequence[str] | None, workers: int = 1,
                      done: bool = True) -> dict[str, RowCounts]:
        """RowCounts per image (None: one entry "", the whole table): one GSI1 query per image,
        kind and status (the image is in the GSI1SK), `workers` at a time."""
        scopes = [""] if image_ids is None else list(image_ids)
        queries = [(scope, status, prefix + (f"IMAGE#{scope}#" if scope else ""))
                   for scope in scopes for prefix in EMBEDDED_KINDS.values()
                   for status in ("NONE", "PENDING", "SUCCESS")[:3 if done else 2]]
        out = {scope: RowCounts() for scope in scopes}

        def one(query: tuple[str, str, str]) -> tuple[str, str, int, int]:
            scope, status, prefix = query
            return (scope, status, *self.count_status(status, prefix, noise=status == "NONE"))

        with ThreadPoolExecutor(max(1, min(workers, len(queries)))) as pool:
            for scope, status, rows, noise in pool.map(one, queries):
                out[scope].add(status, rows, noise)
        return out


# --- prod's buckets: the objects the items point to (--copy-objects) ------------------------

# Checksums S3 keeps of a whole object (HeadObject with ChecksumMode): equal ones mean equal
# content where ETags cannot say (a KMS-encrypted object's ETag is no digest of its bytes).
CHECKSUM_FIELDS = ("ChecksumCRC64NVME", "ChecksumCRC32", "ChecksumCRC32C", "ChecksumSHA1", "ChecksumSHA256")


@dataclasses.dataclass
class ObjectResult:
    """What became of one object: present (prod holds it: same size and ETag or checksum),
    copied, to_copy (a dry run), or missing (the source cannot be read: `error` says why)."""
    ref: ObjectRef
    outcome: str
    size: int = 0
    error: str = ""


class Buckets:
    """The S3 side of a migration: the only code that reads or copies objects. Server-side
    copies (no byte passes through this machine): CopyObject, which keeps content type,
    metadata and cache headers and, for an object uploaded in one piece, its ETag; an object
    uploaded in parts (its ETag ends in -N; objects over 5 GiB always are) is copied part by
    part with UploadPartCopy in the source's own part sizes, so its ETag comes out the same as
    the source's too. That is what makes "already present" survive the copy: same size and
    same ETag (or the same whole-object checksum) is the same object, and a re-run copies
    nothing again."""

    def __init__(self, cfg: Config, client: Any = None, source_client: Any = None) -> None:
        self.cfg = cfg
        self.client = client if client is not None else make_client(cfg, "s3")
        # --source-profile: the dev buckets are read with other credentials, which cannot
        # copy server-side into prod's: every object is streamed through this machine.
        self.streams = bool(cfg.source_profile) and cfg.source_profile != cfg.profile
        self.source = source_client if source_client is not None else (
            make_client(dataclasses.replace(cfg, profile=cfg.source_profile), "s3") if self.streams
            else self.client)
        self.retrier = Retrier(cfg.max_retries)

    def head(self, bucket: str, key: str, part: int | None = None,
             source: bool = False) -> dict[str, Any] | None:
        """The object's metadata (`source`: as the dev side's credentials see it), None where it
        does not exist; other errors raise."""
        from botocore.exceptions import ClientError

        kwargs: dict[str, Any] = {"Bucket": bucket, "Key": key, "ChecksumMode": "ENABLED"}
        if part is not None:
            kwargs["PartNumber"] = part
        client = self.source if source else self.client
        try:
            return cast("dict[str, Any]", self.retrier.call(client.head_object, **kwargs))
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise

    @staticmethod
    def same(source: Mapping[str, Any], target: Mapping[str, Any]) -> bool:
        if source.get("ContentLength") != target.get("ContentLength"):
            return False
        if source.get("ETag") and source.get("ETag") == target.get("ETag"):
            return True
        return any(source.get(f) and source.get(f) == target.get(f) for f in CHECKSUM_FIELDS)

    def ensure(self, ref: ObjectRef, copy: bool) -> ObjectResult:
        """Make prod hold the object (copy=False: only say whether it would be copied)."""
        try:
            source = self.head(ref.source, ref.key, source=True)
        except Exception as exc:
            if botocore_setup_error(exc):
                raise
            return ObjectResult(ref, "missing", error=f"cannot read it: {describe_error(exc)}")
        if source is None:
            return ObjectResult(ref, "missing", error="not found (404)")
        size = int(source.get("ContentLength", 0))
        target = self.head(ref.target, ref.key)
        if target is not None and self.same(source, target):
            return ObjectResult(ref, "present", size)
        if not copy:
            return ObjectResult(ref, "to_copy", size)
        if self.streams:
            self.stream(ref, source)
            return ObjectResult(ref, "copied", size)
        parts = int(source.get("PartsCount") or 0) or etag_parts(source.get("ETag", ""))
        try:
            if parts > 1:
                self.copy_in_parts(ref, source, parts)
            else:
                self.retrier.call(self.client.copy_object, Bucket=ref.target, Key=ref.key,
                                  CopySource={"Bucket": ref.source, "Key": ref.key},
                                  MetadataDirective="COPY", TaggingDirective="COPY")
        except Exception as exc:  # prod's credentials may not read dev's bucket: stream it
            if getattr(exc, "response", {}).get("Error", {}).get("Code") != "AccessDenied":
                raise
            log.info("%s: server-side copy refused (AccessDenied): streaming it", ref)
            self.stream(ref, source)
        return ObjectResult(ref, "copied", size)

    def stream(self, ref: ObjectRef, source: Mapping[str, Any]) -> None:
        """Read the object with the dev side's client and write it with prod's, one part in
        memory at a time (per worker): in one PutObject up to STREAM_PART_BYTES, else as a
        multipart upload in the source's own parts where they are at most STREAM_MAX_PART_BYTES
        (its ETag then survives, as a server-side copy's does), else in STREAM_PART_BYTES
        parts (the ETag then differs: "already present" needs a whole-object checksum)."""
        size = int(source.get("ContentLength", 0))
        parts = int(source.get("PartsCount") or 0) or etag_parts(source.get("ETag", ""))
        kept = kept_headers(source)
        if parts <= 1 and size <= STREAM_PART_BYTES:
            body = self.read_range(ref, 0, size)
            self.retrier.call(self.client.put_object, Bucket=ref.target, Key=ref.key, Body=body, **kept)
            return
        lengths = [int((self.head(ref.source, ref.key, part=n, source=True) or {}).get("ContentLength", 0))
                   for n in range(1, parts + 1)] if parts > 1 else []
        if not lengths or max(lengths) > STREAM_MAX_PART_BYTES:
            lengths = [min(STREAM_PART_BYTES, size - start) for start in range(0, size, STREAM_PART_BYTES)]
        self.upload_in_parts(ref, kept, lengths, lambda n, start, length: {
            "Body": self.read_range(ref, start, length)}, self.client.upload_part)

    def read_range(self, ref: ObjectRef, start: int, length: int) -> bytes:
        if length <= 0:
            return b""
        response = self.retrier.call(self.source.get_object, Bucket=ref.source, Key=ref.key,
                                     Range=f"bytes={start}-{start + length - 1}")
        return cast(bytes, response["Body"].read())

    def upload_in_parts(self, ref: ObjectRef, kept: Mapping[str, Any], lengths: Sequence[int],
                        part_args: Callable[[int, int, int], dict[str, Any]],
                        send: Callable[..., Any]) -> None:
        """One multipart upload, a part per length; aborted if any part fails, so no half
        object is left behind."""
        upload = self.retrier.call(self.client.create_multipart_upload, Bucket=ref.target, Key=ref.key,
                                   **kept)["UploadId"]
        try:
            done, start = [], 0
            for n, length in enumerate(lengths, 1):
                result = self.retrier.call(send, Bucket=ref.target, Key=ref.key, UploadId=upload,
                                           PartNumber=n, **part_args(n, start, length))
                etag = result["CopyPartResult"]["ETag"] if "CopyPartResult" in result else result["ETag"]
                done.append({"PartNumber": n, "ETag": etag})
                start += length
            self.retrier.call(self.client.complete_multipart_upload, Bucket=ref.target, Key=ref.key,
                              UploadId=upload, MultipartUpload={"Parts": done})
        except BaseException:
            with contextlib.suppress(Exception):
                self.client.abort_multipart_upload(Bucket=ref.target, Key=ref.key, UploadId=upload)
            raise

    def copy_in_parts(self, ref: ObjectRef, source: Mapping[str, Any], parts: int) -> None:
        """UploadPartCopy in the source's part sizes (HeadObject PartNumber=n)."""
        lengths = [int((self.head(ref.source, ref.key, part=n) or {}).get("ContentLength", 0))
                   for n in range(1, parts + 1)]
        self.upload_in_parts(ref, kept_headers(source), lengths, lambda n, start, length: {
            "CopySource": {"Bucket": ref.source, "Key": ref.key},
            "CopySourceRange": f"bytes={start}-{start + length - 1}"}, self.client.upload_part_copy)


# Streaming (--source-profile): a part in memory per worker, never a whole large object.
STREAM_PART_BYTES = 8 * 1024 * 1024
STREAM_MAX_PART_BYTES = 64 * 1024 * 1024


def kept_headers(source: Mapping[str, Any]) -> dict[str, Any]:
    """What a copy written anew keeps of its source (a server-side CopyObject keeps it itself)."""
    return {name: source[name] for name in ("ContentType", "CacheControl", "ContentDisposition",
                                            "ContentEncoding", "ContentLanguage", "Expires",
                                            "Metadata", "StorageClass") if source.get(name)}


def etag_parts(etag: str) -> int:
    """The part count a multipart ETag ends in ("...-3": 3), else 0."""
    match = re.search(r"-(\d+)\"?$", etag)
    return int(match.group(1)) if match else 0


# =============================================================================
# 7. Compare with prod
# =============================================================================


# --- comparing with what prod holds -------------------------------------------
PROD_OWNED = {"RECEIPT_LINE": {"embedding_status", "GSI1PK"},
              "RECEIPT_WORD": {"embedding_status", "GSI1PK"}}


def canonical(v: AttributeValue) -> Any:
    """A comparable form: numbers as decimals (DynamoDB trims zeros), maps by key, sets as sets."""
    (tag, x), = v.items()
    if tag == "N":
        return ("N", Decimal(x))
    if tag == "M":
        return ("M", {k: canonical(y) for k, y in x.items()})
    if tag == "L":
        return ("L", [canonical(y) for y in x])
    if tag == "NS":
        return (tag, frozenset(Decimal(s) for s in x))
    if tag in ("SS", "BS"):
        return (tag, frozenset(x))
    return (tag, x)


def differing_attributes(ours: Mapping[str, AttributeValue],
                         theirs: Mapping[str, AttributeValue]) -> list[str]:
    return sorted(name for name in set(ours) | set(theirs)
                  if name not in ours or name not in theirs
                  or canonical(ours[name]) != canonical(theirs[name]))


def meaningful_differences(item: Mapping[str, AttributeValue], names: Sequence[str]) -> list[str]:
    """Differences that are not prod's own embedding progress (which prod owns)."""
    owned = PROD_OWNED.get(item["TYPE"]["S"], set())
    return [n for n in names if n not in owned]


# The types this tool writes. A mirror makes prod's items of these types in an image's
# partition exactly the source's; an item of any other type there (COMPACTION_RUN, a summary,
# whatever another part of the system keeps beside the image) is never changed or deleted.
WRITTEN_TYPES = frozenset(k.type for k in KINDS)


@dataclasses.dataclass
class Diff:
    to_write: list[dict[str, AttributeValue]]
    missing: list[dict[str, AttributeValue]] = dataclasses.field(default_factory=list)  # not in prod
    unchanged: int = 0
    prod_progress: int = 0   # differs only in prod-owned embedding fields: left alone
    conflicts: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    # a mirror: prod's items of the written types that the source no longer has, and how many
    # items of other types the partition holds (never touched), by TYPE
    to_delete: list[dict[str, AttributeValue]] = dataclasses.field(default_factory=list)
    other_types: Counter[str] = dataclasses.field(default_factory=Counter)
    # prod's version of each item to write or delete that prod holds (the journal's "before")
    before: dict[str, dict[str, AttributeValue]] = dataclasses.field(default_factory=dict)


CONFLICT_VALUE_CHARS = 200


def shown_value(v: AttributeValue | None) -> str | None:
    """A value for the person deciding a conflict: DynamoDB JSON, cut at 200 characters
    (None: the item has no such attribute)."""
    if v is None:
        return None
    text = json.dumps(v, sort_keys=True, ensure_ascii=False)
    if len(text) <= CONFLICT_VALUE_CHARS:
        return text
    return f"{text[:CONFLICT_VALUE_CHARS]}...[cut, {len(text):,} characters]"


def diff_with_prod(items: Sequence[dict[str, AttributeValue]],
                   prod: Mapping[str, dict[str, AttributeValue]], overwrite_changed: bool,
                   mirror: bool = False) -> Diff:
    """Decide per item: write (missing), unchanged (identical), or conflict (prod differs).

    With `mirror`, `prod` is the image's whole partition and prod is made the source's: an item
    that differs is written (no conflict: the mirror was asked for), and prod's items of the
    written types that the source lacks are to delete. "Differs" is the same test as for a
    conflict: prod's own embedding progress (PROD_OWNED) is no difference, so an unchanged
    line or word keeps its status; a changed one is written as the source has it (NONE)."""
    diff = Diff([])
    for item in items:
        existing = prod.get(item["SK"]["S"])
        if existing is None:
            diff.to_write.append(item)
            diff.missing.append(item)
            continue
        names = differing_attributes(item, existing)
        if not names:
            diff.unchanged += 1
        elif not meaningful_differences(item, names):
            diff.prod_progress += 1
        elif mirror:
            diff.to_write.append(item)
            diff.before[item["SK"]["S"]] = existing
        else:
            meaningful = meaningful_differences(item, names)
            diff.conflicts.append({
                "PK": item["PK"]["S"], "SK": item["SK"]["S"], "type": item["TYPE"]["S"],
                "attributes": meaningful,
                "values": {n: {"prod": shown_value(existing.get(n)), "export": shown_value(item.get(n))}
                           for n in meaningful},
                # the decision; whether a write then succeeded is the image's outcome
                "action": "overwrite" if overwrite_changed else "keep prod"})
            if overwrite_changed:
                diff.to_write.append(item)
                diff.before[item["SK"]["S"]] = existing
    if mirror:
        ours = {item["SK"]["S"] for item in items}
        for sk, existing in sorted(prod.items()):
            kind = existing.get("TYPE", {}).get("S", "(no TYPE)")
            if sk in ours:
                continue
            if kind in WRITTEN_TYPES:
                diff.to_delete.append(existing)
                diff.before[sk] = existing
            else:
                diff.other_types[kind] += 1
    return diff


# =============================================================================
# 8. The run plan
# =============================================================================


def convert_source(source: ImageSource, rules: Rules, ignore_unknown: bool) -> ConvertedImage:
    """Read one image and convert it into the items to write; InputError says why it cannot
    be (a file that cannot be read, bad data, or a case no check foresaw: still this image
    alone)."""
    try:
        image = convert_image(source, source.read(), rules, ignore_unknown)
    except InputError:
        raise
    except OSError as exc:
        raise InputError(f"cannot read file: {exc.strerror}") from None
    except Exception as exc:
        log.debug("unexpected error reading %s", source.name, exc_info=True)
        raise InputError(f"unexpected error: {describe_error(exc)}") from None
    for key, n in image.ignored.items():
        log.warning("%s: ignored unknown export list %r (%d entries)", source.name, key, n)
    return image


def check_export_side(cfg: Config, origin: ConfigOrigin, sources: Sequence[ImageSource]) -> None:
    """Swapped --dev-config/--prod-config (with table names that do not say "dev") would copy
    into the dev table. Where both raw bucket names are configured, the first image that names
    its raw bucket (images[0] and its receipts) shows which side the export came from: if
    every name is the configured prod bucket and not the dev one, a live copy is refused and a
    dry run warns. Not for --source-table: reading it costs a Query, and check_source_config
    already refuses a source table that is the target (swapped configs make the dev table it)."""
    dev, prod = cfg.dev_raw_bucket, cfg.prod_raw_bucket
    if cfg.force or cfg.source_table or not dev or not prod or dev == prod:
        return
    for source in sources:
        try:
            data = source.read().data
        except Exception:  # unreadable: the copy fails this image and says why
            continue
        images, receipts = data.get("images"), data.get("receipts")
        image = images[0] if isinstance(images, list) and images and isinstance(images[0], dict) else {}
        if not isinstance(image.get("raw_s3_bucket"), str):
            continue
        names = {image["raw_s3_bucket"]} | {
            r["raw_s3_bucket"] for r in (receipts if isinstance(receipts, list) else [])
            if isinstance(r, dict) and isinstance(r.get("raw_s3_bucket"), str)}
        if names != {prod}:
            return
        message = (f"{source.name}: the export's raw_s3_bucket is {prod!r}, the configured prod raw "
                   f"bucket ({origin.of('prod_raw_bucket')}), not the dev one {dev!r} "
                   f"({origin.of('dev_raw_bucket')}): the export comes from the prod side, or "
                   "--dev-config and --prod-config are swapped")
        if not cfg.dry_run:
            raise UsageError(f"{message}; refusing to copy into {cfg.table!r} (--force overrides)")
        log.warning("%s; a live copy would refuse to start", message)
        return


@dataclasses.dataclass(eq=False)
class PlannedImage:
    """One selected image and what the run does with it."""
    source: ImageSource
    in_prod: bool                       # prod holds its IMAGE item
    # What the plan settles itself: skipped_existing, skipped_empty, failed or
    # not_reached_limit. None: to copy; the copier gives it its outcome (copied,
    # skipped_existing when nothing differed, failed).
    outcome: str | None = None
    error: InputError | None = None     # why it fails (outcome "failed")
    items: int = 0                      # the items it converts to (images to copy)
    image: ConvertedImage | None = None  # its items, while on their way to the copier

    @property
    def image_id(self) -> str:
        return self.source.image_id


class RunPlan:
    """What a run does with each selected image, decided in one place by one set of rules, in
    selection order: an image prod holds is skipped (with --no-skip-existing: re-synced), one
    without receipts is skipped (unless --include-empty), one that cannot be read or converted
    fails, and once --limit images not yet in prod are planned, the first new image after them
    and every image after it are left for a later run. The dry run, the confirmation prompt,
    the waves and the copy all read this plan.

    Deciding converts each image. `decide()` yields the decisions as it makes them, each image
    to copy with its items, so a copy that needs no totals up front converts every image once
    and holds one at a time. `settle()` decides every image first (the prompt and the waves
    need the totals); the items are then dropped, and the copier converts the image again."""

    def __init__(self, cfg: Config, sources: Sequence[ImageSource], prod: ProdTable | None,
                 rules: Rules, deletions: Sequence[ImageSource] = ()) -> None:
        # the selection, then the prod images to delete (--delete-missing)
        self.cfg, self.sources, self.prod, self.rules = cfg, [*sources, *deletions], prod, rules
        self.decided: list[PlannedImage] = []
        self.settled = False
        self.started = False

    def decide(self) -> Iterator[PlannedImage]:
        """Every image's decision, once each (a plan is walked once)."""
        if self.started:
            raise RuntimeError("a run plan is decided once")
        self.started = True
        new = 0
        limit_reached = False
        for chunk in batches(self.sources, GET_BATCH_SIZE):
            present, unknown = self.images_present(chunk) if not limit_reached else (set(), None)
            for source in chunk:
                in_prod = source.image_id in present
                limit_reached = limit_reached or (
                    unknown is None and not in_prod and self.cfg.limit is not None
                    and new >= self.cfg.limit)
                planned = (PlannedImage(source, in_prod, "not_reached_limit")
                           if limit_reached and not source.delete
                           else self.decide_image(source, in_prod, unknown))
                new += planned.outcome is None and not in_prod
                self.record(planned)
                yield planned
        self.settled = True

    def images_present(self, chunk: Sequence[ImageSource]) -> tuple[set[str], str | None]:
        """Which images of this chunk prod holds (read-only); with the reason instead when
        prod cannot be asked (the chunk's images fail, the run goes on)."""
        if self.prod is None:
            return set(), None
        try:
            return self.prod.images_present([s.image_id for s in chunk]), None
        except Exception as exc:
            if botocore_setup_error(exc):
                raise  # no credentials/region: a configuration error for every image
            return set(), describe_error(exc)

    def decide_image(self, source: ImageSource, in_prod: bool, unknown: str | None) -> PlannedImage:
        if unknown is not None:
            return PlannedImage(source, False, "failed",
                                InputError(f"cannot check prod for this image: {unknown}"))
        if source.image_id.lower() in self.cfg.protect:  # as prod holds it, or lacks it
            return PlannedImage(source, in_prod, "protected")
        if source.delete:  # the copier reads its partition: also a partial image is deleted
            return PlannedImage(source, in_prod, image=nothing_of(source))
        if in_prod and self.cfg.skip_existing:
            return PlannedImage(source, True, "skipped_existing")
        try:
            image = convert_source(source, self.rules, self.cfg.ignore_unknown)
        except InputError as exc:
            return PlannedImage(source, in_prod, "failed", exc)
        if not image.has_receipts and not self.cfg.include_empty:
            return PlannedImage(source, in_prod, "skipped_empty")
        return PlannedImage(source, in_prod, items=len(image.items), image=image)

    def record(self, planned: PlannedImage) -> None:
        if planned.error is not None:
            log.error("%s", format_error(planned.error.record(planned.source)))
        if planned.outcome == "protected":
            print(action_line({"image_id": planned.image_id, "action": "PROTECTED"}))
        self.decided.append(planned)

    def settle(self) -> RunPlan:
        """Decide every image now; their items are dropped (converted again when copied)."""
        for planned in self.decide():
            planned.image = None
        return self

    def walk(self) -> Iterable[PlannedImage]:
        """Every image's decision, for the copier: made now, or made already (settled)."""
        return self.decided if self.settled else self.decide()

    def to_copy(self) -> list[PlannedImage]:
        """The images the copier gets (a settled plan)."""
        assert self.settled
        return [p for p in self.decided if p.outcome is None]

    def outcomes(self) -> Counter[str]:
        """The images whose outcome the plan settled, by outcome (so far, while deciding)."""
        return Counter(p.outcome for p in self.decided if p.outcome is not None)

    def errors(self) -> list[dict[str, Any]]:
        return [p.error.record(p.source) for p in self.decided if p.error is not None]

    def waves(self, size: int) -> list[list[PlannedImage]]:
        """The images to copy, in waves of `size` (the last may be smaller)."""
        return [list(wave) for wave in batches(self.to_copy(), size)]

    def preview(self) -> str:
        """The confirmation's line: what the run will do, from the settled plan. Items are
        counted from the export, so "up to": the copy's diff skips what prod already holds."""
        outcomes = self.outcomes()
        deletes = [p for p in self.to_copy() if p.source.delete]
        todo = [p for p in self.to_copy() if not p.source.delete]
        resynced = sum(p.in_prod for p in todo)
        parts = [(outcomes["skipped_existing"], "already in prod, skipped"),
                 (resynced, f"{'mirrored' if self.cfg.mirror else 're-synced'} (already in prod)"),
                 (len(deletes), "prod images the source lacks, to DELETE"),
                 (outcomes["protected"], "protected (--protect), left as prod holds them"),
                 (outcomes["skipped_empty"], "without receipts, skipped"),
                 (outcomes["failed"], "failing (named above), not copied"),
                 (outcomes["not_reached_limit"], "left for a later run (--limit)")]
        others = ", ".join(f"{n:,} {what}" for n, what in parts if n)
        return (f"{plural(len(todo) - resynced, 'image')} to copy" + (f" ({others})" if others else "")
                + f", with up to {sum(p.items for p in todo):,} items; items prod already holds "
                  "are not rewritten" + ("; items of those images prod holds and the source lacks "
                                         "are deleted" if self.cfg.mirror else ""))


# =============================================================================
# 9. The copier
# =============================================================================


class Tally:
    """What the copier did with the images it was handed: one outcome each (copied; skipped
    when prod held all of it already; failed), and its items. Thread-safe: the pool's
    workers settle images. A wave has a tally of its own; the run's adds them up."""

    ITEMS = ("planned", "to_write", "written", "unchanged", "prod_progress_kept", "conflicts",
             "failed_before_diff", "to_delete", "deleted")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.images: Counter[str] = Counter()
        self.items: Counter[str] = Counter()
        self.entities: Counter[str] = Counter()      # of the images copied
        self.excluded: Counter[str] = Counter()
        self.ignored: Counter[str] = Counter()
        self.other_types: Counter[str] = Counter()   # by TYPE, never written
        self.prod_other_types: Counter[str] = Counter()  # in partitions mirrored: never touched
        # --copy-objects: referenced, copied, already_present, to_copy, missing_in_source,
        # bytes_copied, bytes_to_copy; and the objects missing where that was allowed
        self.objects: Counter[str] = Counter()
        self.missing_objects: list[dict[str, str]] = []
        self.actions: list[dict[str, Any]] = []      # --mirror/--delete-missing: per image
        self.errors: list[dict[str, Any]] = []
        self.conflicts: list[dict[str, Any]] = []
        self.failed_images: list[str] = []

    def planned(self, image: ConvertedImage) -> None:
        with self.lock:
            self.items["planned"] += len(image.items)
            self.objects["referenced"] += len(image.objects)
            self.excluded.update(image.excluded)
            self.ignored.update(image.ignored)
            self.other_types.update(image.other_types)

    def diffed(self, image: ConvertedImage, diff: Diff) -> None:
        with self.lock:
            self.items["to_write"] += len(diff.to_write)
            self.items["unchanged"] += diff.unchanged
            self.items["prod_progress_kept"] += diff.prod_progress
            self.items["conflicts"] += len(diff.conflicts)
            self.items["to_delete"] += len(diff.to_delete)
            self.prod_other_types.update(diff.other_types)
            self.conflicts.extend(dict(c, image_id=image.image_id) for c in diff.conflicts)
        for c in diff.conflicts:
            log.warning("conflict: %s %s differs in prod (%s); %s", c["PK"], c["SK"],
                        ", ".join(c["attributes"]), c["action"])

    def written(self, n: int, deleted: int = 0) -> None:
        with self.lock:
            self.items["written"] += n
            self.items["deleted"] += deleted

    def action(self, record: dict[str, Any]) -> None:
        with self.lock:
            self.actions.append(record)

    def object_done(self, result: ObjectResult, allowed_missing: bool) -> None:
        with self.lock:
            if result.outcome == "missing":
                self.objects["missing_in_source"] += 1
                if allowed_missing:
                    self.missing_objects.append({"bucket": result.ref.source, "key": result.ref.key,
                                                 "error": result.error})
                return
            self.objects["already_present" if result.outcome == "present" else result.outcome] += 1
            if result.outcome in ("copied", "to_copy"):
                self.objects["bytes_" + result.outcome] += result.size

    def done(self, image: ConvertedImage, outcome: str) -> None:
        with self.lock:
            self.images[outcome] += 1
            if outcome == "copied":
                self.entities.update(image.entities)

    def failed(self, source: ImageSource, errors: Sequence[InputError], undecided: int = 0) -> None:
        """The image's one outcome: failed, with every error it had; `undecided` of its items
        were never diffed (e.g. prod could not be read)."""
        records = [e.record(source) for e in errors]
        for record in records:
            log.error("%s", format_error(record))
        with self.lock:
            self.errors.extend(records)
            self.failed_images.append(source.image_id)
            self.images["failed"] += 1
            self.items["failed_before_diff"] += undecided

    def add(self, other: Tally) -> None:
        """Count another tally's images and items in this one (a wave's in the run's)."""
        with self.lock, other.lock:
            for mine, theirs in ((self.images, other.images), (self.items, other.items),
                                 (self.entities, other.entities), (self.excluded, other.excluded),
                                 (self.ignored, other.ignored), (self.other_types, other.other_types),
                                 (self.prod_other_types, other.prod_other_types),
                                 (self.objects, other.objects)):
                mine.update(theirs)
            self.actions += other.actions
            self.missing_objects += other.missing_objects
            self.errors += other.errors
            self.conflicts += other.conflicts
            self.failed_images += other.failed_images


class ItemBudget:
    """Bounds the items held by submitted-but-unsettled images, so memory does not grow
    with the export. An image larger than the whole budget still runs, alone."""

    def __init__(self, limit: int) -> None:
        self.limit, self.used = limit, 0
        self.cond = threading.Condition()

    def try_acquire(self, n: int) -> bool:
        with self.cond:
            if self.used == 0 or self.used + n <= self.limit:
                self.used += n
                return True
            return False

    def acquire(self, n: int) -> None:
        with self.cond:
            self.cond.wait_for(lambda: self.used == 0 or self.used + n <= self.limit)
            self.used += n

    def take(self, n: int) -> None:
        """Count items already in memory (prod's items to delete) without waiting: a worker
        thread must never wait for a budget only workers give back."""
        with self.cond:
            self.used += n

    def release(self, n: int) -> None:
        with self.cond:
            self.used -= n
            self.cond.notify_all()

    def wait_idle(self) -> None:
        with self.cond:
            self.cond.wait_for(lambda: self.used == 0)


@dataclasses.dataclass(eq=False)
class ImageJob:
    """One image on its way: converted, diffed, its items written in stages (its first item,
    the rest, its IMAGE item), each stage only once the one before is written whole."""
    image: ConvertedImage
    held: int                      # ItemBudget units this job still holds
    in_prod: bool = False          # prod has its IMAGE item
    prod: dict[str, dict[str, AttributeValue]] = dataclasses.field(default_factory=dict)
    unread: int = 0                # keys of prod's versions not yet read
    first: dict[str, AttributeValue] | None = None  # its first item (first_item), if any
    probing: bool = False          # what is being read is its first item only
    stages: list[list[dict[str, AttributeValue]]] = dataclasses.field(default_factory=list)
    unsettled: int = 0             # items handed to the batcher, not yet written or lost
    to_write: int = 0
    written: int = 0
    diffed: bool = False           # its items were counted as to write, unchanged, kept or conflicts
    deleting: bool = False         # a prod image the source lacks (--delete-missing)
    delete_keys: set[str] = dataclasses.field(default_factory=set)  # SKs its stages delete
    before: dict[str, dict[str, AttributeValue]] = dataclasses.field(default_factory=dict)  # journal
    to_delete: int = 0
    deleted: int = 0
    objects_left: int = 0          # --copy-objects: its objects not yet in prod (or checked)
    errors: list[InputError] = dataclasses.field(default_factory=list)
    lost: int = 0                  # items a write lost for a cause other than a refusal
    lost_reasons: list[str] = dataclasses.field(default_factory=list)
    finished: bool = False
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)


Entry = tuple[ImageJob, dict[str, AttributeValue]]


class Batcher:
    """Packs the items of any image into full batches of 25 (fewer requests than one
    remainder batch per image); with size=100, the keys of prod's versions into full
    BatchGetItem requests the same way. An open batch waits for more entries while work it
    counts is in flight (what comes back adds entries) or the reader is still producing.
    Once neither is true, waiting would only stall, so it is sent as it is; and so it is
    when the whole pool is idle (`pool_idle`), even while the reader produces: the workers
    would otherwise wait for the reader to convert the next images (at the start of a run,
    a whole budget of them)."""

    def __init__(self, send: Callable[[list[Entry]], None], size: int = BATCH_SIZE,
                 pool_idle: Callable[[], bool] = lambda: True) -> None:
        self.send, self.size, self.pool_idle = send, size, pool_idle
        self.lock = threading.Lock()
        self.open: list[Entry] = []
        self.keys: set[tuple[str, str]] = set()
        self.in_flight = 0          # pool tasks (reads, writes) not yet finished
        self.producing = True       # the reader may still add images

    def add(self, entries: Iterable[Entry]) -> None:
        ready: list[list[Entry]] = []
        with self.lock:
            for entry in entries:
                key = item_key(entry[1])
                if key in self.keys:  # the same image listed twice: never one batch
                    ready.append(self.cut())
                self.open.append(entry)
                self.keys.add(key)
                if len(self.open) == self.size:
                    ready.append(self.cut())
        for batch in ready:
            self.send(batch)
        self.flush_if_idle()

    def cut(self) -> list[Entry]:
        batch, self.open, self.keys = self.open, [], set()
        self.in_flight += 1  # counted before it is sent: the batcher is never idle in between
        return batch

    def task_started(self) -> None:
        with self.lock:
            self.in_flight += 1

    def task_done(self) -> None:
        with self.lock:
            self.in_flight -= 1
        self.flush_if_idle()

    def set_producing(self, producing: bool) -> None:
        with self.lock:
            self.producing = producing
        self.flush_if_idle()

    def flush_if_idle(self) -> None:
        with self.lock:
            idle = not self.in_flight and (not self.producing or self.pool_idle())
            batch = self.cut() if self.open and idle else None
        if batch:
            self.send(batch)


class Copier:
    """Copies (live) or diffs (dry run) the images a run plan hands it, one outcome each.

    An image goes: read prod's versions of its keys -> diff -> write what is missing in
    batches of 25 shared with other images, on one pool (parallel across batches), in three
    stages: its first item (the smallest SK but the IMAGE item's), then every other item but
    the IMAGE item, then the IMAGE item, each stage only once the one before is confirmed.

    The order is what makes two keys speak for the whole image. The IMAGE item in prod means
    the image is complete. Without it, the image's first item in prod means an earlier copy
    started it (or prod made it); its absence means no copy ever wrote any item of the
    image, so there is nothing of it in prod to read: an image prod lacks costs one key
    lookup, packed 100 a request with other images' keys, instead of a read of every key or
    a Query of its partition (a round trip per image, which a copy over a long round trip
    pays in throughput). When the first item is there, every key is read and diffed, so
    nothing prod holds is overwritten unseen. A dry run with a table makes the same reads
    and decisions and writes nothing; without one it reads nothing and takes prod to be
    empty.

    A mirror (--mirror) and a delete (--delete-missing) read the image's whole partition
    instead (one Query): what prod holds that the source lacks is deleted. Their stages: the
    first item, the other puts, the deletes, then the IMAGE item (put, or for an image
    deleted, deleted last: until then it is the handle by which a re-run finds the image).
    With a journal, each batch's writes are recorded, prod's versions included, before the
    batch is sent."""

    def __init__(self, cfg: Config, rules: Rules, prod: ProdTable | None, dump: DumpFile,
                 journal: Journal | None = None, buckets: Buckets | None = None) -> None:
        self.cfg, self.rules, self.prod, self.dump, self.journal = cfg, rules, prod, dump, journal
        self.buckets = buckets  # --copy-objects (None offline: objects are only counted)
        self.live = prod is not None and not cfg.dry_run
        # Items not yet settled (read, diffed, written), released batch by batch, so the
        # next image starts while the last batches of the previous one are still out
        # (~12 MB at 5,000 items, whatever the size of the export).
        self.budget = ItemBudget(max(5_000, cfg.max_workers * BATCH_SIZE * 20))
        self.tally = Tally()
        self.stopping = False
        self.progress: Progress | None = None
        self.pool: ThreadPoolExecutor | None = None
        # The write batcher counts every task in flight (reads decide what is written), so
        # its count going to 0 is the pool going idle.
        self.writes = Batcher(self.submit_writes, pool_idle=lambda: True)
        # Reads of prod's versions are shared across images too: with images of ~110 items,
        # one image alone needs two BatchGetItem requests, the second nearly empty.
        self.reads = Batcher(self.submit_reads, GET_BATCH_SIZE,
                             pool_idle=lambda: not self.writes.in_flight)

    def run(self, images: Iterable[PlannedImage], count: int, tally: Tally) -> None:
        """Copy (or diff) the images of `images` the plan left to copy (the others only move
        the progress bar); `count` is how many `images` holds. Each gets its outcome in
        `tally`; images still on their way when the run is stopped get none."""
        self.tally = tally
        self.progress = Progress(self.cfg.progress, count, objects=self.buckets is not None and self.live)
        self.set_producing(True)
        try:
            if self.prod is None:
                self.walk(images, self.decide_offline)
            else:
                self.walk_with_pool(images)
        finally:
            self.progress.close()
        self.dump.check()  # the dump's last lines failed to reach the disk

    def walk_with_pool(self, images: Iterable[PlannedImage]) -> None:
        """The live run and the dry run with a table: reads and writes on a pool."""
        switch_interval = sys.getswitchinterval()
        try:
            # Conversion on this thread must not hold the GIL for long while workers
            # wait to hand the next request to the table.
            sys.setswitchinterval(0.0005)
            with ThreadPoolExecutor(self.cfg.max_workers, thread_name_prefix="copy") as pool:
                self.pool = pool
                try:
                    self.walk(images, self.start_image)
                    self.set_producing(False)
                    self.budget.wait_idle()  # tasks submit tasks: keep the pool open
                except BaseException:
                    self.stopping = True
                    pool.shutdown(wait=True, cancel_futures=True)
                    raise
        finally:
            sys.setswitchinterval(switch_interval)

    def walk(self, images: Iterable[PlannedImage], start: Callable[[ImageJob], None]) -> None:
        """One image at a time in memory: each image to copy is converted (or taken as the
        plan converted it) and started."""
        for planned in images:
            self.dump.check()
            if self.journal:
                self.journal.check()
            image, planned.image = planned.image, None
            if planned.outcome is None and image is None:
                image = self.convert_again(planned)
            if image is None:
                self.progress_image()
                continue
            self.tally.planned(image)
            # One unit more than its items: the job itself, held until its outcome, so the
            # budget is never idle (the run never ends) while any image is still on its way,
            # e.g. one that deletes only or waits for its objects.
            start(ImageJob(image, held=len(image.items) + 1, in_prod=planned.in_prod,
                           first=first_item(image.items), deleting=planned.source.delete))
            del image  # not alive while the next image is read

    def convert_again(self, planned: PlannedImage) -> ConvertedImage | None:
        """A settled plan dropped the image's items: convert it again (it failing now is
        its outcome)."""
        if planned.source.delete:
            return nothing_of(planned.source)
        try:
            return convert_source(planned.source, self.rules, self.cfg.ignore_unknown)
        except InputError as exc:
            self.tally.failed(planned.source, [exc])
            return None

    def progress_image(self) -> None:
        if self.progress:
            self.progress.image_done()

    # --- the pool's tasks ---------------------------------------------------------------

    def spawn(self, work: Callable[[], None], jobs: Callable[[], Iterable[ImageJob]],
              *counted_by: Batcher) -> None:
        """Run `work` on the pool. The batchers count it as in flight until it ends (they
        were told it started, and are told in this order); an error no check foresaw fails
        `jobs` alone."""
        assert self.pool is not None

        def task() -> None:
            try:
                work()
            except Exception as exc:
                self.internal_error(jobs(), exc)
            finally:
                for batcher in counted_by:
                    batcher.task_done()
        try:
            self.pool.submit(task)
        except RuntimeError:  # the pool is shut down: the run is being stopped
            for batcher in counted_by:
                batcher.task_done()
            if not self.stopping:  # never silently: work dropped is an image that fails
                self.fail(jobs(), InputError("internal error: work submitted after the pool closed"))

    # --- one image: read prod, diff, decide ------------------------------------------

    def decide_offline(self, job: ImageJob) -> None:
        """No table: prod counts as empty, every item is to be written."""
        self.decide(job, {})

    def start_image(self, job: ImageJob) -> None:
        if self.progress:
            self.progress.planned(len(job.image.items))
        if not self.budget.try_acquire(job.held):
            self.set_producing(False)  # blocked: let open batches go
            self.budget.acquire(job.held)
            self.set_producing(True)
        if self.cfg.mirror or job.deleting:  # what prod holds beyond the source's keys counts
            self.reads.task_started()
            self.writes.task_started()
            self.spawn(lambda: self.read_partition(job), lambda: [job], self.writes, self.reads)
            return
        if job.in_prod:
            self.read_keys(job)
            return
        if job.first is None:  # only its IMAGE item, which prod lacks: nothing to read
            self.decide(job, {})
            return
        # Prod lacks the IMAGE item: is the image's first item there (see the class)?
        job.probing, job.unread = True, 1
        self.reads.add([(job, {"PK": job.first["PK"], "SK": job.first["SK"]})])

    def read_keys(self, job: ImageJob) -> None:
        """Read prod's version of every key of the image, in requests shared with others."""
        job.unread = len(job.image.items)
        if not job.unread:
            self.read_done(job)
        self.reads.add((job, {"PK": i["PK"], "SK": i["SK"]}) for i in job.image.items)

    def set_producing(self, producing: bool) -> None:
        """Reads first: a read batch sent now counts as in flight for the write batcher."""
        self.reads.set_producing(producing)
        self.writes.set_producing(producing)

    def submit_reads(self, batch: list[Entry]) -> None:
        """The read batcher counted this batch as in flight; the write batcher counts it
        too (what it reads decides what is written)."""
        self.writes.task_started()
        # Told in this order when it ends: the read batcher then sees the pool idle.
        self.spawn(lambda: self.read_batch(batch), lambda: {job for job, _ in batch},
                   self.writes, self.reads)

    def read_batch(self, batch: list[Entry]) -> None:
        """Read prod's versions of these keys (one BatchGetItem); an image whose keys are
        all read is diffed and decided."""
        assert self.prod is not None
        try:
            found = self.prod.read_keys([key for _, key in batch])
            error = None
        except Exception as exc:
            found, error = [], InputError(f"cannot read prod: {describe_error(exc)}")
        by_key = {item_key(item): item for item in found}
        by_job: dict[ImageJob, list[tuple[str, str]]] = {}
        for job, key in batch:
            by_job.setdefault(job, []).append(item_key(key))
        read: list[ImageJob] = []
        for job, keys in by_job.items():
            with job.lock:
                if error is not None and not job.errors:
                    job.errors.append(error)
                job.prod.update((k[1], by_key[k]) for k in keys if k in by_key)
                job.unread -= len(keys)
                if job.unread == 0:
                    read.append(job)
        self.each_job(read, self.read_done)

    def read_done(self, job: ImageJob) -> None:
        if job.errors:
            self.finish(job)
            return
        if job.probing:  # the first item there: an earlier copy started the image
            job.probing, found = False, bool(job.prod)
            job.prod = {}
            if found:
                self.read_keys(job)
            # a writer that kept no order may have left items; a journaled run must know what
            # it overwrites (else undo would delete such an item as one the run added)
            elif self.cfg.check_partitions or self.journal:
                self.reads.task_started()
                self.writes.task_started()
                self.spawn(lambda: self.check_partition(job), lambda: [job], self.writes, self.reads)
            else:
                self.decide(job, {})
            return
        job.in_prod = "IMAGE" in job.prod
        prod, job.prod = job.prod, {}
        self.decide(job, prod)

    def check_partition(self, job: ImageJob) -> None:
        """--check-partitions: anything in the image's partition, and every key is read; an
        empty partition is diffed with nothing. A Query that gets no answer fails the image."""
        assert self.prod is not None
        try:
            empty = self.prod.partition_is_empty(job.image.items[0]["PK"]["S"])
        except Exception as exc:
            self.fail([job], InputError(f"cannot read prod: {describe_error(exc)}"))
            return
        if empty:
            self.decide(job, {})
        else:
            self.read_keys(job)

    def read_partition(self, job: ImageJob) -> None:
        """--mirror, --delete-missing: every item prod holds under the image's PK."""
        assert self.prod is not None
        try:
            items = self.prod.partition(f"IMAGE#{job.image.image_id}")
        except Exception as exc:
            self.fail([job], InputError(f"cannot read prod: {describe_error(exc)}"))
            return
        prod = {item["SK"]["S"]: item for item in items}
        job.in_prod = prod.get("IMAGE", {}).get("TYPE", {}).get("S") == "IMAGE"
        self.decide(job, prod)

    def decide(self, job: ImageJob, prod: Mapping[str, dict[str, AttributeValue]]) -> None:
        """Diff with prod; a dry run stops here, a live run hands the items to the batcher."""
        image = job.image
        mirror = self.cfg.mirror or job.deleting
        diff = diff_with_prod(image.items, prod, self.cfg.overwrite_changed, mirror)
        self.tally.diffed(image, diff)
        job.diffed = True
        job.to_write, job.to_delete = len(diff.to_write), len(diff.to_delete)
        if mirror or self.cfg.delete_missing:
            self.record_action(job, diff)
        settled = len(image.items) - job.to_write
        image.items = []  # from here on only the batches hold the items still to write
        if not self.live:  # dry run: what the live run would write
            self.dump.write(diff.to_write)
            self.release(job, job.held)
            self.then_objects(job, copy=False, then=self.finish)
            return
        if self.progress:
            self.progress.items_done(settled)
            self.progress.planned(job.to_delete)
        self.release(job, settled)
        with job.lock:  # prod's items to delete are held until deleted
            job.held += job.to_delete
        self.budget.take(job.to_delete)
        job.delete_keys = {i["SK"]["S"] for i in diff.to_delete}
        job.before = diff.before if self.journal else {}
        # The image's first item, where prod lacks it, goes alone and before the others; the
        # IMAGE item (a put, or the delete of an image the source lacks) goes last.
        puts = [i for i in diff.to_write if i is not job.first and i["SK"]["S"] != "IMAGE"]
        stages = [[i for i in diff.to_write if i is job.first], puts,
                  [i for i in diff.to_delete if i["SK"]["S"] != "IMAGE"],
                  [i for i in [*diff.to_write, *diff.to_delete] if i["SK"]["S"] == "IMAGE"]]
        job.stages = [stage for stage in stages if stage]
        self.then_objects(job, copy=True, then=self.write_next_stage)

    def then_objects(self, job: ImageJob, copy: bool, then: Callable[[ImageJob], None]) -> None:
        """--copy-objects: the image's objects first (a dry run only asks whether each would be
        copied), one pool task each; `then` once the last is settled. An object that cannot
        be read from the dev bucket fails the image before any of its items is written (with
        --allow-missing-objects it is a warning)."""
        refs = [] if self.buckets is None or job.deleting else job.image.objects
        if not refs:
            then(job)
            return
        job.objects_left = len(refs)
        for ref in refs:
            self.writes.task_started()
            self.spawn(functools.partial(self.object_task, job, ref, copy, then), lambda: [job],
                       self.writes)

    def object_task(self, job: ImageJob, ref: ObjectRef, copy: bool,
                    then: Callable[[ImageJob], None]) -> None:
        assert self.buckets is not None
        try:
            result = self.buckets.ensure(ref, copy)
        except Exception as exc:
            if botocore_setup_error(exc):
                raise
            result = ObjectResult(ref, "missing", error=f"cannot copy it: {describe_error(exc)}")
        allowed = self.cfg.allow_missing_objects and result.error.startswith(("not found", "cannot read"))
        self.tally.object_done(result, allowed)
        if result.outcome == "copied" and self.progress:
            self.progress.bytes_done(result.size)
        with job.lock:
            if result.outcome == "missing" and not allowed:
                job.errors.append(InputError(f"object {ref}: {result.error}"))
            job.objects_left -= 1
            last = job.objects_left == 0
        if result.outcome == "missing" and allowed:
            log.warning("%s: object %s: %s (--allow-missing-objects)", job.image.image_id, ref, result.error)
        if last:
            then(job)

    def record_action(self, job: ImageJob, diff: Diff) -> None:
        """--mirror/--delete-missing: what happens to the image, one line each (the dry run's
        plan, the live run's record)."""
        if job.deleting:
            action = "DELETE" if diff.to_delete else "ABSENT"
        elif not job.in_prod:
            action = "ADD"
        else:
            action = "UPDATE" if diff.to_write or diff.to_delete else "UNCHANGED"
        record = {"image_id": job.image.image_id, "action": action, "put": len(diff.to_write),
                  "delete": len(diff.to_delete), "unchanged": diff.unchanged + diff.prod_progress}
        self.tally.action(record)
        assert self.progress is not None  # set by run()
        self.progress.write(action_line(record))

    # --- writing ------------------------------------------------------------------

    def submit_writes(self, batch: list[Entry]) -> None:
        """The write batcher counted this batch as in flight already."""
        self.spawn(lambda: self.write_batch(batch), lambda: {job for job, _ in batch}, self.writes)

    def write_batch(self, batch: list[Entry]) -> None:
        """Puts and deletes of any images, as one request; with a journal, recorded first."""
        assert self.prod is not None
        deletes = [(job, item) for job, item in batch if item["SK"]["S"] in job.delete_keys]
        puts = [(job, item) for job, item in batch if item["SK"]["S"] not in job.delete_keys]
        try:
            if self.journal:
                self.journal.record(puts, deletes)
            self.prod.write([item for _, item in puts], [item for _, item in deletes])
            lost: set[tuple[str, str]] = set()
            error: WriteError | None = None
        except JournalError as exc:  # not recorded, so not sent; the run stops (Journal.check)
            lost, error = {item_key(i) for _, i in batch}, WriteError(str(exc))
        except WriteError as exc:
            lost, error = {item_key(i) for i in exc.unwritten}, exc
        by_job: dict[ImageJob, list[dict[str, AttributeValue]]] = {}
        for job, item in batch:
            by_job.setdefault(job, []).append(item)
        self.each_job(by_job, lambda job: self.settle(job, by_job[job], lost, error))

    def each_job(self, jobs: Iterable[ImageJob], step: Callable[[ImageJob], None]) -> None:
        """Take each of the images a request served its next step: one request serves many
        images, and an error no check foresaw in one image's step fails that image alone."""
        for job in jobs:
            try:
                step(job)
            except Exception as exc:
                self.internal_error([job], exc)

    def settle(self, job: ImageJob, items: list[dict[str, AttributeValue]],
               lost: set[tuple[str, str]], error: WriteError | None) -> None:
        """These items of the job were written or lost; after the last item of a stage, the
        next stage goes (only if nothing was lost), and after the last stage the image is
        finished."""
        done = [i for i in items if item_key(i) not in lost]
        failed = [i for i in items if item_key(i) in lost]
        if done:
            written = [i for i in done if i["SK"]["S"] not in job.delete_keys]
            deleted = len(done) - len(written)
            with job.lock:
                job.written += len(written)
                job.deleted += deleted
            self.tally.written(len(written), deleted)
            self.dump.write(written)
            if self.progress:
                self.progress.items_done(len(done))
        with job.lock:
            if failed and error is not None:
                add_write_error(job, error, failed)
            job.unsettled -= len(items)
            last = job.unsettled == 0
        self.release(job, len(items))  # memory is bounded by items not yet settled
        if last:
            self.write_next_stage(job)

    def write_next_stage(self, job: ImageJob) -> None:
        """The job's next stage goes to the batcher once every item of the one before is
        written; after a lost item, none does (the image fails, and its IMAGE item is never
        written)."""
        if job.errors or job.lost or not job.stages:
            self.finish(job)
            return
        stage = job.stages.pop(0)
        job.unsettled = len(stage)
        self.writes.add((job, item) for item in stage)

    def release(self, job: ImageJob, n: int, final: bool = False) -> None:
        """Give back budget for items this job no longer holds (never more than it holds);
        its last unit only with its outcome (`final`, in finish)."""
        with job.lock:
            n = max(0, min(n, job.held - (0 if final else 1)))
            job.held -= n
        self.budget.release(n)

    def fail(self, jobs: Iterable[ImageJob], error: InputError) -> None:
        """These images fail with this error (each gets its one outcome in finish)."""
        for job in jobs:
            with job.lock:
                job.errors.append(error)
            self.finish(job)

    def internal_error(self, jobs: Iterable[ImageJob], exc: Exception) -> None:
        """A case no check foresaw (called from its except clause): only these images
        fail, and the run goes on; while the run is being stopped, it is the stop."""
        if self.stopping:
            return
        log.debug("unexpected error", exc_info=True)
        self.fail(jobs, InputError(f"internal error: {describe_error(exc)}"))

    def finish(self, job: ImageJob) -> None:
        """The image's one outcome: failed, skipped (nothing to write) or copied."""
        with job.lock:
            if job.finished:
                return
            job.finished = True
        image = job.image
        if job.lost:
            job.errors.append(InputError(f"{job.lost} item(s) not written: {'; '.join(job.lost_reasons)}"))
        try:
            if job.errors:
                # e.g. prod could not be read: its items were never decided
                self.tally.failed(image.source, job.errors, 0 if job.diffed else len(image.items))
            elif job.deleting:
                self.tally.done(image, "deleted" if job.to_delete else "not_in_prod")
            elif job.in_prod and job.to_write == 0 and job.to_delete == 0:
                self.tally.done(image, "skipped_existing")
            else:
                self.tally.done(image, "copied")
                log.debug("%s: complete, %d item(s) written", image.image_id, job.written)
            self.progress_image()
        finally:
            self.release(job, job.held, final=True)


def action_line(record: Mapping[str, Any]) -> str:
    """One image of a mirror or delete: `UPDATE    <id>: put 12, delete 9, unchanged 300`."""
    counts = ", ".join(f"{what} {record[what]:,}" for what in ("put", "delete", "unchanged")
                       if record.get(what))
    return f"{record['action']:<9} {record['image_id']}" + (f": {counts}" if counts else "")


def first_item(items: Iterable[dict[str, AttributeValue]]) -> dict[str, AttributeValue] | None:
    """An image's first-written item: the one with the smallest SK but the IMAGE item (the
    same whichever export era or source the image comes from)."""
    return min((i for i in items if i["SK"]["S"] != "IMAGE"), key=lambda i: i["SK"]["S"], default=None)


def add_write_error(job: ImageJob, exc: WriteError, lost: Sequence[dict[str, AttributeValue]]) -> None:
    """Record items of the job a write lost (the caller holds job.lock): the server's refusal
    of one of its own items is an error of its own (kind, key and reason); any other cause is
    counted, so an endpoint that died under every batch of an image is one line for the
    image ("N item(s) not written: cause"), not one per batch."""
    keys = {item_key(i) for i in lost}
    for refusal in exc.refusals:
        if refusal.refused is not None and item_key(refusal.refused) in keys:
            job.errors.append(refusal.input_error())
            return
    job.lost += len(lost)
    if exc.reason not in job.lost_reasons:
        job.lost_reasons.append(exc.reason)


class DumpFile:
    """--dump-items: one item per line, DynamoDB low-level JSON, keys sorted.

    A failed write (disk full, the file's directory removed) is kept, not raised: the items
    it was called for are already in prod or planned, so their image has not failed. The
    run stops starting images (``check``) and says why; the dump stays what it was."""

    def __init__(self, path: Path | None, append: bool = False) -> None:
        self.path = path
        self.lock = threading.Lock()
        self.error: OSError | None = None
        self.file = path.open("a" if append else "w", encoding="utf-8") if path else None

    def write(self, items: Iterable[dict[str, AttributeValue]]) -> None:
        if self.file:
            lines = "".join(json.dumps(i, sort_keys=True, ensure_ascii=False) + "\n" for i in items)
            with self.lock:
                if self.error is None:
                    try:
                        self.file.write(lines)
                    except OSError as exc:
                        self.error = exc

    def check(self) -> None:
        """Raise FatalError once a write has failed (called before each new image)."""
        if self.error is not None:
            raise FatalError(f"--dump-items {self.path}: cannot write: {describe_error(self.error)}; "
                             "stopped before the next image")

    def close(self) -> None:
        if self.file:
            try:
                self.file.close()
            except OSError as exc:  # the last buffered lines did not reach the disk
                self.error = self.error or exc


# --- the journal: what a destructive run overwrites and deletes, written before it does -----

JOURNAL_FORMAT = "copy_dynamodb_dev_to_prod journal"
JOURNAL_VERSION = 1


class JournalError(Exception):
    """The journal could not be written: the batch it was for is not sent."""


def json_item(item: Mapping[str, AttributeValue]) -> dict[str, Any]:
    """An item as JSON can hold it: binary values (B, BS) as base64 text, tagged B64/BS64."""
    return {name: json_value(v) for name, v in item.items()}


def json_value(v: Any) -> Any:
    (tag, x), = v.items()
    if tag == "B":
        return {"B64": base64.b64encode(x).decode("ascii")}
    if tag == "BS":
        return {"BS64": [base64.b64encode(b).decode("ascii") for b in x]}
    if tag == "M":
        return {"M": {k: json_value(y) for k, y in x.items()}}
    if tag == "L":
        return {"L": [json_value(y) for y in x]}
    return {tag: x}


def item_from_json(data: Mapping[str, Any]) -> dict[str, AttributeValue]:
    return {name: value_from_json(v) for name, v in data.items()}


def value_from_json(v: Any) -> Any:
    (tag, x), = v.items()
    if tag == "B64":
        return {"B": base64.b64decode(x)}
    if tag == "BS64":
        return {"BS": [base64.b64decode(b) for b in x]}
    if tag == "M":
        return {"M": {k: value_from_json(y) for k, y in x.items()}}
    if tag == "L":
        return {"L": [value_from_json(y) for y in x]}
    return {tag: x}


def item_digest(item: Mapping[str, AttributeValue] | None) -> str | None:
    """What an item says, apart from prod's own embedding progress (PROD_OWNED): equal items
    have equal digests however DynamoDB spells their numbers. None: no item."""
    if item is None:
        return None
    owned = PROD_OWNED.get(item.get("TYPE", {}).get("S", ""), set())
    text = json.dumps({k: stable_form(v) for k, v in item.items() if k not in owned},
                      sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def stable_form(v: Any) -> Any:
    """canonical() as JSON: numbers normalised, sets sorted."""
    (tag, x), = v.items()
    if tag == "N":
        return ["N", str(Decimal(x).normalize())]
    if tag == "NS":
        return ["NS", sorted(str(Decimal(n).normalize()) for n in x)]
    if tag in ("SS", "BS"):
        return [tag, sorted(base64.b64encode(b).decode() if isinstance(b, bytes) else b for b in x)]
    if tag == "B":
        return ["B", base64.b64encode(x).decode()]
    if tag == "M":
        return ["M", {k: stable_form(y) for k, y in x.items()}]
    if tag == "L":
        return ["L", [stable_form(y) for y in x]]
    return [tag, x]


class Journal:
    """--journal: JSON Lines, appended to. Each run begins with a header line (the format, the
    table and endpoint it writes to, when); then one line per write, recorded with its whole
    batch and flushed to the disk (fsync) before the batch is sent:
    {"PK", "SK", "op": "put"|"delete", "before": prod's item or null (a new item),
    "after": the digest of the item put, or null (deleted)}. A new item costs its key and a
    digest; an overwritten or deleted one its whole former self, which is what --undo puts
    back. A write that cannot be recorded is not sent: the run stops before its next image."""

    def __init__(self, path: Path, header: Mapping[str, Any]) -> None:
        self.path = path
        self.lock = threading.Lock()
        self.error: OSError | None = None
        self.records = 0
        try:
            # One write(2) per batch on an O_APPEND descriptor, no buffer in between: a run
            # killed while recording leaves whole lines, or at most one cut-off last line.
            self.fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
            self.drop_cut_line()
            self.append([{"journal": JOURNAL_FORMAT, "version": JOURNAL_VERSION, **header}])
            self.records = 0
        except OSError as exc:
            raise UsageError(f"--journal {path}: cannot write: {describe_error(exc)}") from None

    def drop_cut_line(self) -> None:
        """A journal appended to whose last line is cut off (a run killed, or a disk that filled
        up, while recording): that batch was never sent, since a batch goes only once its
        record is on the disk. The cut line is dropped, so the file stays a whole journal."""
        size = os.fstat(self.fd).st_size
        if not size:
            return
        tail = os.pread(self.fd, min(size, 1 << 20), max(0, size - (1 << 20)))
        if tail.endswith(b"\n"):
            return
        cut = tail.rfind(b"\n")
        keep = size - len(tail) + cut + 1 if cut >= 0 else (0 if size <= len(tail) else None)
        if keep is None:
            raise OSError(f"its last line is cut off and longer than 1 MiB: repair {self.path} first")
        log.warning("--journal %s: its last line was cut off (a batch never sent): dropped", self.path)
        os.ftruncate(self.fd, keep)

    def record(self, puts: Sequence[Entry], deletes: Sequence[Entry]) -> None:
        lines = [{"PK": item["PK"]["S"], "SK": item["SK"]["S"], "op": "put",
                  "before": self.before(job, item), "after": item_digest(item)} for job, item in puts]
        lines += [{"PK": item["PK"]["S"], "SK": item["SK"]["S"], "op": "delete",
                   "before": json_item(item), "after": None} for _, item in deletes]
        try:
            self.append(lines)
        except OSError as exc:
            self.error = self.error or exc
            raise JournalError(f"--journal {self.path}: cannot write: {describe_error(exc)}; "
                               "not sent") from None

    @staticmethod
    def before(job: ImageJob, item: Mapping[str, AttributeValue]) -> dict[str, Any] | None:
        existing = job.before.get(item["SK"]["S"])
        return json_item(existing) if existing is not None else None

    def append(self, lines: Sequence[Mapping[str, Any]]) -> None:
        text = "".join(json.dumps(line, sort_keys=True, ensure_ascii=False) + "\n" for line in lines)
        data = text.encode("utf-8")
        with self.lock:
            if self.error is not None:
                raise self.error
            while data:
                data = data[os.write(self.fd, data):]
            os.fsync(self.fd)
            self.records += len(lines)

    def check(self) -> None:
        """Raise FatalError once a record has failed (called before each new image)."""
        if self.error is not None:
            raise FatalError(f"--journal {self.path}: cannot write: {describe_error(self.error)}; "
                             "stopped before the next image (nothing unrecorded was sent)")

    def close(self) -> None:
        try:
            os.close(self.fd)
        except OSError as exc:
            self.error = self.error or exc


class Progress:
    """tqdm bars on stderr for images and items; silent when stderr is not a terminal."""

    def __init__(self, enabled: bool, images: int, objects: bool = False) -> None:
        self.enabled = enabled and sys.stderr.isatty()
        self.lock = threading.Lock()
        self.bars: list[Any] = []
        self.bytes: Any = None
        if self.enabled:
            from tqdm import tqdm
            self.images = tqdm(total=images, desc="images", unit="img", file=sys.stderr,
                               position=0, dynamic_ncols=True)
            self.items = tqdm(total=0, desc="items ", unit="item", file=sys.stderr,
                              position=1, dynamic_ncols=True)
            self.bars = [self.images, self.items]
            if objects:  # --copy-objects: the bytes copied, beside the items
                self.bytes = tqdm(total=None, desc="bytes ", unit="B", unit_scale=True,
                                  file=sys.stderr, position=2, dynamic_ncols=True)
                self.bars.append(self.bytes)

    def bytes_done(self, n: int) -> None:
        if self.bytes is not None:
            with self.lock:
                self.bytes.update(n)

    def planned(self, n: int) -> None:
        if self.enabled:
            with self.lock:
                self.items.total += n
                self.items.refresh()

    def items_done(self, n: int) -> None:
        if self.enabled:
            with self.lock:
                self.items.update(n)

    def image_done(self) -> None:
        if self.enabled:
            with self.lock:
                self.images.update(1)

    def write(self, line: str) -> None:
        """A whole line on stdout (workers write them: one write each, under the lock) that
        does not tear the bars."""
        with self.lock:
            if self.enabled:
                from tqdm import tqdm
                tqdm.write(line, file=sys.stdout)
            else:
                sys.stdout.write(line + "\n")
                sys.stdout.flush()

    def close(self) -> None:
        for bar in self.bars:
            bar.close()


class TqdmLogHandler(logging.Handler):
    """Log lines go through tqdm.write so they never tear the progress bars."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm import tqdm
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # pragma: no cover - logging must never raise
            self.handleError(record)


# =============================================================================
# 10. Workflows and waves
# =============================================================================


EXECUTION_ENDED = frozenset({"SUCCEEDED", "FAILED", "TIMED_OUT", "ABORTED"})


# The executions this tool starts are one turn each of their state machine, named by a counter
# that only grows: copy-dev-to-prod-000042 is the 42nd. Step Functions keeps an execution name
# unique per state machine, so two runs that both saw turn 41 as the last and nothing running
# cannot both start turn 42: the second StartExecution fails (ExecutionAlreadyExists) or, while
# the first is running with the same input, returns that same execution. That makes "wait until
# none is running, then start" one atomic step across runs (shards, two operators).
TURN_PREFIX = "copy-dev-to-prod-"
TURN_RE = re.compile(re.escape(TURN_PREFIX) + r"(\d{6,})")


def turn_name(turn: int) -> str:
    name = f"{TURN_PREFIX}{turn:06d}"
    if len(name) > 80:  # Step Functions' limit
        raise ValueError(f"invalid execution name {name!r}")
    return name


def iso_time(value: Any) -> str | None:
    return value.isoformat() if isinstance(value, dt.datetime) else None


@dataclasses.dataclass
class Workflow:
    given: str    # as configured: a name, an ARN, or a prefix of one name
    label: str = ""  # as the operator wrote it (output:KEY, or the same)
    arn: str = ""

    @property
    def name(self) -> str:
        return self.arn.rsplit(":", 1)[-1] if self.arn else self.given


def resolve_machine(given: str, machines: Mapping[str, str]) -> str:
    """A state machine's ARN from its name or a prefix that matches exactly one name (Pulumi
    appends a random suffix to the names it creates)."""
    if given in machines:
        return machines[given]
    matches = sorted(name for name in machines if name.startswith(given))
    if len(matches) == 1:
        return machines[matches[0]]
    if not matches:
        raise FatalError(f"state machine {given!r} not found: no state machine is named so or has "
                         "a name starting with it (ListStateMachines)")
    raise FatalError(f"state machine {given!r} is ambiguous: {len(matches)} names start with it ("
                     + ", ".join(matches) + "); give more of the name, or the ARN")


class Workflows:
    """The embedding workflows (Step Functions state machines, in start order): the one place
    that talks to Step Functions. It resolves their names (read-only, so a dry run can do it
    too), tells which executions are running, takes a turn (starts the next execution, input
    {}, when none is running) and follows executions to their end. When to take turns is the
    caller's policy: --trigger-embeddings takes one per workflow or skips it, the waves wait
    for their turn."""

    def __init__(self, cfg: Config, client: SFNClient | None = None) -> None:
        self.cfg, self.client = cfg, client
        self.retrier = Retrier(cfg.max_retries)
        labels = cfg.workflows_given or cfg.workflows
        self.machines = [Workflow(name, label) for name, label in zip(cfg.workflows, labels, strict=True)]

    def names(self) -> list[str]:
        return [w.name for w in self.machines]

    @property
    def sfn(self) -> SFNClient:
        assert self.client is not None, "connect() first"
        return self.client

    def connect(self) -> None:
        """Resolve every name to its ARN; FatalError if one does not exist or Step Functions
        cannot be reached."""
        with errors_as(FatalError, "cannot reach Step Functions"):
            self.client = self.client or make_client(self.cfg, "stepfunctions")
            listed: dict[str, str] | None = None
            for w in self.machines:
                if w.given.startswith("arn:"):
                    w.arn = w.given
                    continue
                if listed is None:
                    listed = self.retrier.call(self.list_machines)
                w.arn = resolve_machine(w.given, listed)

    def list_machines(self) -> dict[str, str]:
        return {str(m["name"]): str(m["stateMachineArn"])
                for page in self.sfn.get_paginator("list_state_machines").paginate()
                for m in page["stateMachines"]}

    def running(self, machine: Workflow) -> list[str]:
        """The ARNs of the machine's RUNNING executions, whoever started them. Listings are
        retried whole, like every request (botocore's own retries are off)."""
        return self.retrier.call(self.list_running, machine)

    def list_running(self, machine: Workflow) -> list[str]:
        pages = self.sfn.get_paginator("list_executions").paginate(stateMachineArn=machine.arn,
                                                                       statusFilter="RUNNING")
        return [str(e["executionArn"]) for page in pages for e in page.get("executions", [])]

    def last_turn(self, machine: Workflow) -> tuple[int, list[str]]:
        """The last turn taken (0: none) and the running executions seen on the way: newest
        first, up to the end of the page that holds the newest turn."""
        return self.retrier.call(self.list_turns, machine)

    def list_turns(self, machine: Workflow) -> tuple[int, list[str]]:
        turn, running = 0, []
        pages = self.sfn.get_paginator("list_executions").paginate(stateMachineArn=machine.arn)
        for page in pages:
            for e in page.get("executions", []):
                if e["status"] == "RUNNING":
                    running.append(str(e["executionArn"]))
                m = TURN_RE.fullmatch(str(e["name"]))
                if m:
                    turn = max(turn, int(m[1]))
            if turn:
                break
        return turn, running

    def take_turn(self, machine: Workflow) -> tuple[dict[str, Any] | None, list[str]]:
        """Start the machine's next execution if none of its executions is running: (its record,
        []), else (None, the running ones) and the caller asks again later. The running ones
        are listed first (an old one may be pages deep), then the history, which also shows
        one started in between; one started after it takes the same turn as ours, and only
        one of the two starts (see TURN_PREFIX)."""
        from botocore.exceptions import ClientError

        running = self.running(machine)
        if running:
            return None, running
        turn, running = self.last_turn(machine)
        if running:
            return None, running
        try:
            return self.start(machine, turn_name(turn + 1)), []
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "ExecutionAlreadyExists":
                raise
            return None, []  # another run took this turn just now

    def start(self, machine: Workflow, name: str) -> dict[str, Any]:
        """Start one execution with input {}; its record, followed by `follow`."""
        arn = self.retrier.call(self.sfn.start_execution, stateMachineArn=machine.arn, name=name,
                                input="{}")["executionArn"]
        return {"workflow": machine.label, "state_machine": machine.arn, "name": name,
                "arn": str(arn), "status": "RUNNING", "start": None, "stop": None}

    def follow(self, executions: Sequence[dict[str, Any]]) -> bool:
        """Bring the records of executions not yet ended up to date; True when all ended."""
        for e in executions:
            if e["status"] not in EXECUTION_ENDED:
                d = self.retrier.call(self.sfn.describe_execution, executionArn=e["arn"])
                e.update(status=str(d["status"]), start=iso_time(d.get("startDate")),
                         stop=iso_time(d.get("stopDate")))
                for key in ("error", "cause"):
                    if d.get(key):
                        e[key] = d[key]
        return all(e["status"] in EXECUTION_ENDED for e in executions)


@dataclasses.dataclass
class TriggerResult:
    """--trigger-embeddings: each workflow started or not (and why)."""
    started: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    refused: bool = False  # images failed: no workflow started, and the run fails


def trigger_embeddings(cfg: Config, origin: ConfigOrigin, workflows: Workflows,
                       images_failed: bool, resolve_in_dry_run: bool) -> TriggerResult:
    """--trigger-embeddings: take one turn of each workflow (input {}), in order, each unless
    one of its executions is running; none when images failed (the dry run decides the same)."""
    if images_failed:
        print(("Would not start embeddings" if cfg.dry_run else "Not starting embeddings")
              + ": some images failed; fix them and re-run first.")
        return TriggerResult(refused=True)
    if not cfg.copies:  # on its own: no header said where the workflows start
        print(sfn_endpoint_text(cfg, origin))
    if cfg.dry_run:
        if resolve_in_dry_run:  # what the live run resolves: a missing machine fails here too
            workflows.connect()
        for w in workflows.machines:
            print(f"Would start the embedding workflow {w.name} with input {{}}")
        return TriggerResult()
    workflows.connect()
    started = []
    for w in workflows.machines:
        execution, running = workflows.take_turn(w)
        if execution is None:
            why = f"{running[0]} is still running" if running else "another run started it just now"
            print(f"Not starting the workflow {w.name}: {why}")
            started.append({"workflow": w.label, "state_machine": w.arn, "started": False,
                            "running_execution": running[0] if running else None})
            continue
        print(f"Started the embedding workflow {w.name}: {execution['arn']}")
        started.append({"workflow": w.label, "state_machine": w.arn, "started": True,
                        "execution_name": execution["name"], "execution_arn": execution["arn"]})
    return TriggerResult(started)


class Queues:
    """The compaction queues' health (SQS, read-only: GetQueueUrl, GetQueueAttributes): the
    one place that talks to SQS. `live` queues may hold at most --max-queue-depth messages
    before a wave or a round; any message in a `dead` (dead-letter) queue stops the run."""

    def __init__(self, cfg: Config, client: Any = None) -> None:
        self.cfg, self.client = cfg, client
        self.retrier = Retrier(cfg.max_retries)
        self.live = dict.fromkeys(cfg.queues, "")          # as given -> URL
        self.dead = dict.fromkeys(cfg.dead_letter_queues, "")

    @property
    def wanted(self) -> bool:
        return bool(self.live or self.dead)

    def connect(self) -> None:
        with errors_as(FatalError, "cannot read the SQS queues (--queue, --dead-letter-queue)"):
            self.client = self.client or make_client(self.cfg, "sqs")
            for urls in (self.live, self.dead):
                for given in urls:
                    urls[given] = given if re.match(r"https?://", given) else str(
                        self.retrier.call(self.client.get_queue_url, QueueName=given)["QueueUrl"])

    def depths(self, urls: Mapping[str, str]) -> dict[str, int]:
        """Messages per queue: visible, in flight and delayed (a delayed message arrives
        later all the same)."""
        out = {}
        for given, url in urls.items():
            attributes = self.retrier.call(
                self.client.get_queue_attributes, QueueUrl=url,
                AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible",
                                "ApproximateNumberOfMessagesDelayed"])["Attributes"]
            out[given] = sum(int(v) for v in attributes.values())
        return out


# --- waves: a big copy paced by the embedding pipeline -------------------------------------

POLL_FIRST, POLL_MAX, POLL_GROWTH = 3.0, 30.0, 1.5  # seconds between two polls
# For tests only: COPY_DEV_TO_PROD_POLL_SECONDS=S polls every S seconds instead of 3 s growing
# to 30 s, so tests against a local Step Functions do not sit through production intervals.
POLL_ENV = "COPY_DEV_TO_PROD_POLL_SECONDS"
QUIET_LOG_EVERY = 300.0  # without a terminal, a "still waiting" line every 5 minutes
WAIT_CAUSES = ("backlog", "queues", "others", "executions", "round_interval")
STATUS_ROWS_EVERY = 60.0  # seconds between two counts of a wave's rows for the status line


def poll_delays(first: float = POLL_FIRST, cap: float = POLL_MAX) -> Iterator[float]:
    """A few seconds first, growing to `cap`: quick for short runs, cheap for long ones."""
    delay = first
    while True:
        yield delay
        delay = min(cap, delay * POLL_GROWTH)


def poll_schedule(environ: Mapping[str, str]) -> tuple[float, float]:
    """resolve_config calls it first, so a bad value is refused before anything is done."""
    text = environ.get(POLL_ENV)
    if not text:
        return POLL_FIRST, POLL_MAX
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not 0 < seconds < math.inf:
        raise UsageError(f"environment {POLL_ENV} {text!r}: expected a number of seconds > 0")
    return seconds, seconds


def format_duration(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}h {s // 60 % 60:02d}m {s % 60:02d}s" if s >= 3600 else f"{s // 60}m {s % 60:02d}s"


class StatusLine:
    """One line under the progress bars, rewritten in place; only on a terminal."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled and sys.stderr.isatty()
        self.shown = False

    def show(self, text: str) -> None:
        if self.enabled:
            sys.stderr.write("\r\x1b[K" + text)
            sys.stderr.flush()
            self.shown = True

    def clear(self) -> None:
        if self.shown:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()
            self.shown = False


@dataclasses.dataclass(eq=False)
class Wave:
    """One wave: its images, its own tally, and its rounds. Wave 0 copies nothing: it finishes
    the images a run before copied whose rows are not done yet."""
    index: int
    count: int                          # waves of the run (wave 0 not counted)
    images: list[PlannedImage]
    tally: Tally = dataclasses.field(default_factory=Tally)
    copied: bool = False                # its copy ran (a gate may end the run first)
    outcome: str | None = None
    would_start: list[str] = dataclasses.field(default_factory=list)
    rows_found: RowCounts | None = None  # wave 0: the rows that made it necessary
    rounds: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    gates: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    waited: dict[str, float] = dataclasses.field(default_factory=dict)   # seconds, by cause
    started: float | None = None        # monotonic clock when the wave began
    seconds_to_done: float | None = None

    @property
    def label(self) -> str:
        return f"wave {self.index} of {self.count}" if self.index else "wave 0 (images already in prod)"

    @property
    def round(self) -> int:
        return len(self.rounds)

    def waited_total(self) -> float:
        return sum(self.waited.values())

    def image_ids(self) -> list[str]:
        return [p.image_id for p in self.images]

    def executions(self) -> list[dict[str, Any]]:
        return [e for r in self.rounds for e in r["executions"]]

    def to_json(self, dry_run: bool) -> dict[str, Any]:
        out: dict[str, Any] = {"index": self.index, "images": len(self.images),
                               "image_ids": self.image_ids()}
        if self.copied:
            out.update(images_copied=self.tally.images["copied"],
                       items_planned=self.tally.items["planned"],
                       items_to_write=self.tally.items["to_write"])
            if not dry_run:
                out["items_written"] = self.tally.items["written"]
            if self.tally.images["failed"]:
                out["images_failed"] = self.tally.images["failed"]
        optional = {"outcome": self.outcome, "would_start": self.would_start,
                    "rows_found": self.rows_found.to_json() if self.rows_found else None,
                    "rounds": self.rounds, "queues": self.gates,
                    "seconds_waited": {k: round(v, 3) for k, v in self.waited.items()},
                    "seconds_to_done": self.seconds_to_done}
        out.update((k, v) for k, v in optional.items() if v not in (None, [], {}))
        return out


@dataclasses.dataclass
class WaveRun:
    """The waves of a run (--wave-size): how they were cut, and each one as it went."""
    size: int
    dry_run: bool
    done_when: str = "embedded"
    count: int = 0
    images: int = 0
    waves: list[Wave] = dataclasses.field(default_factory=list)
    blocked: str | None = None   # the dry run: why the live run would stop before its first write

    def plan_json(self) -> dict[str, Any]:
        out = {"wave_size": self.size, "waves": self.count, "images": self.images,
               "dry_run": self.dry_run, "wave_done": self.done_when}
        if self.blocked:
            out["would_stop"] = self.blocked
        return out

    def waves_json(self) -> list[dict[str, Any]]:
        return [w.to_json(self.dry_run) for w in self.waves]

    def rerun_advice(self) -> str:
        """What re-running the same command does, from where the run stands."""
        unfinished = sum(len(w.images) for w in self.waves if w.outcome != "done"
                         and (w.copied or w.index == 0) and not w.tally.images["failed"])
        not_copied = self.images - sum(len(w.images) for w in self.waves if w.index and w.copied)
        steps = []
        if unfinished:
            steps.append(f"first runs rounds for the {plural(unfinished, 'image')} already in prod "
                         "whose rows are not done (wave 0)")
        if not_copied:
            steps.append(f"copies the {plural(not_copied, 'image')} not yet copied, in waves")
        if not steps:
            return ("Nothing is lost: re-running the same command checks the rows and exits 0 when "
                    "they are done.")
        return ("Nothing is lost: executions keep running in AWS, and re-running the same command "
                + " and then ".join(steps) + " (copied images are skipped).")


class Waiter:
    """Polls until a probe says done. All waits of one wave together are bounded by
    --wave-timeout; the time goes to the wave by cause. Clock and sleep are injectable."""

    def __init__(self, timeout: float, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep,
                 poll: tuple[float, float] = (POLL_FIRST, POLL_MAX),
                 status: StatusLine | None = None) -> None:
        self.timeout, self.clock, self.sleep, self.poll = timeout, clock, sleep, poll
        self.status = status or StatusLine(False)

    def wait(self, wave: Wave, cause: str, probe: Callable[[], tuple[bool, str]], start: str,
             advice: Callable[[], str], delays: Iterator[float] | None = None) -> None:
        label = wave.label + (f", round {wave.round}" if wave.round else "")
        began = self.clock()
        before = wave.waited_total()
        delays = delays or poll_delays(*self.poll)
        announced, last_log = False, began
        try:
            while True:
                done, text = probe()
                now = self.clock()
                waited = before + now - began
                if done:
                    return
                if not announced:
                    print(f"{label[0].upper()}{label[1:]}: {start}")
                    announced = True
                line = f"{label}: waited {format_duration(waited)}; {text}"
                self.status.show(line)
                if not self.status.enabled and now - last_log >= QUIET_LOG_EVERY:
                    log.info("%s", line)
                    last_log = now
                left = self.timeout - waited
                if left <= 0:
                    wave.outcome = "timed out"
                    raise FatalError(
                        f"{label}: still waiting after {format_duration(waited)} "
                        f"(--wave-timeout {self.timeout:g} s; {text}). {advice()}")
                self.sleep(min(next(delays), left))
        finally:
            wave.waited[cause] = wave.waited.get(cause, 0.0) + self.clock() - began
            self.status.clear()


class WaveDriver:
    """--wave-size: the images the plan copies go in waves. After a wave is copied, rounds run
    until its receipt lines and words are done (--wave-done): a round starts the workflows in
    order, one turn each, waits for their executions to end, then counts the wave's rows in
    the table; between rounds --round-interval. So the pipeline never holds more rows in
    flight than one wave has. Before a wave and before a round the queue gates are checked;
    before the first wave, the images of this selection prod already holds are finished
    first (wave 0), so a re-run after a stop finishes what the stop left. Each wave is one
    Copier.run with a tally of its own, added to the run's."""

    def __init__(self, cfg: Config, plan: RunPlan, copier: Copier, workflows: Workflows, queues: Queues,
                 prod: ProdTable | None, tally: Tally, run: WaveRun, waiter: Waiter) -> None:
        self.cfg, self.plan, self.copier, self.workflows, self.queues = cfg, plan, copier, workflows, queues
        self.prod, self.tally, self.run_record, self.waiter = prod, tally, run, waiter

    def run(self) -> None:
        waves = self.plan.waves(self.cfg.wave_size or 1)
        self.run_record.count = len(waves)
        self.run_record.images = sum(len(w) for w in waves)
        # What the live run resolves first (a missing state machine or queue stops it before
        # anything is copied), the dry run resolves too when it reads prod: it fails the same way.
        if self.prod is None:
            plan = [Wave(k, len(waves), images) for k, images in enumerate(waves, 1)]
        else:
            self.workflows.connect()
            if self.queues.wanted:
                self.queues.connect()
            finishing = self.finishing_wave(len(waves))
            plan = ([finishing] if finishing else []) + [Wave(k, len(waves), images)
                                                         for k, images in enumerate(waves, 1)]
            if self.cfg.dry_run and self.queues.wanted:
                self.preview_gates()
        for wave in plan:
            self.run_record.waves.append(wave)
            if not (self.finish_earlier(wave) if wave.index == 0 else self.copy_wave(wave)):
                return

    def finishing_wave(self, count: int) -> Wave | None:
        """Wave 0: the selected images prod already holds (skipped) whose rows are not done,
        e.g. those of a run stopped after its last copy but before its rounds ended."""
        assert self.prod is not None
        held = [p for p in self.plan.decided if p.in_prod and p.outcome == "skipped_existing"]
        if not held:
            return None
        with errors_as(FatalError, "cannot read the embedding status of the images already in prod"):
            rows = self.prod.rows_by_image([p.image_id for p in held], self.cfg.max_workers, done=False)
        unfinished = [p for p in held if rows[p.image_id].waiting(self.cfg.wave_done)]
        if not unfinished:
            return None
        wave = Wave(0, count, unfinished)
        wave.rows_found = RowCounts()
        for p in unfinished:
            wave.rows_found.add_counts(rows[p.image_id])
        print(f"Wave 0: {plural(len(unfinished), 'image')} already in prod whose rows are not done "
              f"({wave.rows_found.text()}): " + ("would run" if self.cfg.dry_run else "running")
              + " rounds for them before copying")
        return wave

    def preview_gates(self) -> None:
        """The dry run reads the queues once and says what the live run would do now."""
        with errors_as(FatalError, "cannot read the SQS queues"):
            dead = self.queues.depths(self.queues.dead)
            live = self.queues.depths(self.queues.live)
        full = {q: n for q, n in dead.items() if n}
        for q in dead:
            if q not in full:
                print(f"Dead-letter queue {q}: empty")
        if full:
            self.run_record.blocked = "; ".join(f"dead-letter queue {q} holds {plural(n, 'message')}"
                                                for q, n in full.items())
            print(f"Would stop before writing anything: {self.run_record.blocked}")
        limit = self.cfg.max_queue_depth
        for q, n in live.items():
            print(f"Queue {q}: {plural(n, 'message')} now; "
                  + (f"would wait until at most {limit:,}" if n > limit
                     else f"at most {limit:,}: would go on"))

    def label(self, wave: Wave) -> str:
        return wave.label[0].upper() + wave.label[1:]

    @contextlib.contextmanager
    def waits(self, wave: Wave) -> Iterator[None]:
        """Every wait of a wave (gates, turns, executions, rounds) ends the same way on a failure,
        Ctrl-C or SIGTERM: the wave's outcome, the summary, the report and re-run advice."""
        try:
            yield
        except KeyboardInterrupt as exc:
            wave.outcome = wave.outcome or "interrupted"
            self.waiter.status.clear()
            running = [e["arn"] for e in wave.executions() if e["status"] not in EXECUTION_ENDED]
            raise Stopped.by(exc, f"stopped in {wave.label}"
                             + (f" while {', '.join(running)} kept running in AWS" if running else "")
                             + ". " + self.run_record.rerun_advice()) from None
        except (UsageError, FatalError):
            wave.outcome = wave.outcome or "error"
            raise
        except Exception as exc:
            if botocore_setup_error(exc):
                raise
            wave.outcome = wave.outcome or "error"
            raise FatalError(f"{wave.label}: {describe_error(exc)}. "
                             f"{self.run_record.rerun_advice()}") from None

    def finish_earlier(self, wave: Wave) -> bool:
        wave.started = self.waiter.clock()
        if self.cfg.dry_run:
            wave.outcome, wave.would_start = "planned", self.workflows.names()
            return True
        with self.waits(wave):
            self.run_rounds(wave, wrote=False)
        return True

    def copy_wave(self, wave: Wave) -> bool:
        """Copy one wave and, live, run its rounds. False: stop the run."""
        dry = self.cfg.dry_run
        wave.started = self.waiter.clock()
        if not dry:
            with self.waits(wave):  # the gates last: nothing waits between them and the copy
                if self.cfg.max_pending_embeddings is not None:
                    self.wait_for_backlog(wave)
                self.gate_queues(wave, "wave")
        wave.copied = True
        try:
            self.copier.run(wave.images, len(wave.images), wave.tally)
        finally:
            self.tally.add(wave.tally)
        # One decision for the plan and the live run: the plan is what the live run will do.
        failed = wave.tally.images["failed"]
        if failed:
            wave.outcome = "images failed"
            if dry:  # planned on, so the plan shows every image that would fail
                return True
            print(f"{self.label(wave)}: {failed:,} image(s) failed: no workflows started, no further "
                  "wave copied. Fix them and re-run the same command (copied images are skipped).")
            return False
        wrote = wave.tally.items["to_write" if dry else "written"] > 0
        if dry:  # rounds as run_rounds decides them: the rows of a wave that writes nothing count
            with errors_as(FatalError, f"{wave.label}: cannot read the embedding status of its rows"):
                rounds = wrote or (self.prod is not None
                                   and self.count_rows(wave, done=False).waiting(self.cfg.wave_done) > 0)
            wave.outcome = "planned" if rounds else "nothing to write"
            wave.would_start = self.workflows.names() if rounds else []
            return True
        with self.waits(wave):
            self.run_rounds(wave, wrote)
        return True

    def run_rounds(self, wave: Wave, wrote: bool) -> None:
        """Rounds until the wave is done; a wave with nothing left waiting needs none."""
        done_when = self.cfg.wave_done
        # A wave that wrote something has at least one round (what it wrote may be all noise,
        # or labels only: the workflows still see it); wave 0 only for rows not done.
        rows = RowCounts() if wrote else self.count_rows(wave, done=False)
        needed = wrote or rows.waiting(done_when) > 0
        while needed:
            if wave.rounds:
                self.pause(wave, rows)
            self.gate_queues(wave, "round")
            wave.rounds.append({"round": wave.round + 1, "executions": []})
            self.run_round(wave)
            rows = self.count_rows(wave)
            wave.rounds[-1]["rows"] = rows.to_json()
            needed = done_when != "executions" and rows.waiting(done_when) > 0
            if needed:
                print(f"{self.label(wave)}, round {wave.round}: not done yet ({rows.text()})")
        wave.outcome = "done"
        wave.seconds_to_done = round(self.waiter.clock() - (wave.started or 0.0), 3)
        print(f"{self.label(wave)}: done after {format_duration(wave.seconds_to_done)}, "
              f"{plural(wave.round, 'round')} ({rows.text()})")

    def count_rows(self, wave: Wave, done: bool = True) -> RowCounts:
        assert self.prod is not None
        return self.prod.row_counts(wave.image_ids(), self.cfg.max_workers, done)

    def run_round(self, wave: Wave) -> None:
        """One turn of each workflow, in order, then wait until all of them ended SUCCEEDED."""
        record = wave.rounds[-1]
        for machine in self.workflows.machines:
            execution = self.take_turn(wave, machine)
            record["executions"].append(execution)
            print(f"{self.label(wave)}, round {wave.round}: started {machine.name}: {execution['arn']}")
        self.wait_for_executions(wave)
        bad = [e for e in record["executions"] if e["status"] != "SUCCEEDED"]
        if bad:
            wave.outcome = "workflow failed"
            raise FatalError(
                f"{wave.label}, round {wave.round}: " + "; ".join(
                    f"the workflow {e['state_machine'].rsplit(':', 1)[-1]} ended {e['status']}: {e['arn']}"
                    + (f" (error {e['error']!r}" + (f", cause {e['cause']!r}" if e.get("cause") else "") + ")"
                       if e.get("error") else "")
                    for e in bad)
                + ". No further wave was copied. Fix the workflow. " + self.run_record.rerun_advice())

    def take_turn(self, wave: Wave, machine: Workflow) -> dict[str, Any]:
        """Start the machine's next execution once none of its executions runs (ours, another
        shard's, anyone's): one execution per workflow at a time, also across runs."""
        taken: list[dict[str, Any]] = []
        waited_for = wave.rounds[-1].setdefault("waited_for", [])

        def probe() -> tuple[bool, str]:
            execution, running = self.workflows.take_turn(machine)
            if execution is not None:
                taken.append(execution)
                return True, ""
            waited_for.extend(arn for arn in running if arn not in waited_for)
            return False, (f"{machine.name}: {', '.join(running)} still running" if running
                           else f"{machine.name}: another run just took a turn")

        self.waiter.wait(wave, "others", probe,
                         start=f"waiting for the running execution(s) of {machine.name} to end "
                               "before starting ours (one at a time)",
                         advice=self.run_record.rerun_advice)
        if not waited_for:
            del wave.rounds[-1]["waited_for"]
        return taken[0]

    def wait_for_executions(self, wave: Wave) -> None:
        executions = wave.rounds[-1]["executions"]
        shown: list[Any] = []   # [when, text] of the last count shown

        def probe() -> tuple[bool, str]:
            done = self.workflows.follow(executions)
            text = ", ".join(f"{e['state_machine'].rsplit(':', 1)[-1]} {e['status']}" for e in executions)
            if not done and self.waiter.status.enabled:  # the wave's rows, for the operator's eye:
                now = self.waiter.clock()                # counted at most once a minute
                if not shown or now - shown[0] >= STATUS_ROWS_EVERY:
                    shown[:] = [now, self.count_rows(wave).text()]
                text += f"; this wave's {shown[1]}"
            return done, text

        self.waiter.wait(wave, "executions", probe, start="waiting for the workflows' executions to end",
                         advice=self.run_record.rerun_advice)

    def pause(self, wave: Wave, rows: RowCounts) -> None:
        """--round-interval between two rounds: the pipeline's batches take their time."""
        began = self.waiter.clock()
        interval = self.cfg.round_interval

        def probe() -> tuple[bool, str]:
            left = interval - (self.waiter.clock() - began)
            return left <= 0, f"{rows.text()}; next round in {format_duration(max(0.0, left) + 0.999)}"

        self.waiter.wait(wave, "round_interval", probe,
                         start=f"next round in {format_duration(interval)} (--round-interval)",
                         advice=self.run_record.rerun_advice, delays=itertools.repeat(min(1.0, interval)))

    def gate_queues(self, wave: Wave, before: str) -> None:
        """Any message in a dead-letter queue stops the run; a live queue deeper than
        --max-queue-depth is waited for."""
        if not self.queues.wanted:
            return
        limit = self.cfg.max_queue_depth
        checks: list[dict[str, int]] = []

        def probe() -> tuple[bool, str]:
            dead = self.queues.depths(self.queues.dead)
            full = {q: n for q, n in dead.items() if n}
            if full:
                wave.gates.append({"before": before, "round": wave.round, "depths": dead})
                wave.outcome = "dead-letter queue"
                raise FatalError(
                    f"{wave.label}: " + "; ".join(f"dead-letter queue {q} holds {plural(n, 'message')}"
                                                  for q, n in full.items())
                    + (": nothing of this wave was written" if before == "wave"
                       else ": no further round started")
                    + ". Find out why the compaction failed and empty the queue. "
                    + self.run_record.rerun_advice())
            depths = {**dead, **self.queues.depths(self.queues.live)}
            checks.append(depths)
            deep = {q: depths[q] for q in self.queues.live if depths[q] > limit}
            return not deep, "; ".join(f"queue {q}: {n:,} messages" for q, n in deep.items())

        try:
            self.waiter.wait(wave, "queues", probe,
                             start=f"waiting until every --queue holds at most {limit:,} messages",
                             advice=self.run_record.rerun_advice)
        finally:
            for k, depths in enumerate(checks[:1] + checks[1:][-1:]):
                wave.gates.append({"before": before, "round": wave.round, "depths": depths,
                                   **({"after_waiting": True} if k else {})})

    def wait_for_backlog(self, wave: Wave) -> None:
        assert self.prod is not None
        prod, limit = self.prod, self.cfg.max_pending_embeddings or 0

        def probe() -> tuple[bool, str]:
            n = prod.row_counts(None, self.cfg.max_workers, done=False).in_flight
            return n <= limit, f"{n:,} receipt lines/words in flight in the table"

        self.waiter.wait(wave, "backlog", probe,
                         start=f"waiting until at most {limit:,} receipt lines/words in the table are "
                               "in flight (--max-pending-embeddings)",
                         advice=self.run_record.rerun_advice)


def wave_preview(cfg: Config) -> str:
    """For the confirmation: a wave run also starts workflows and waits for their work."""
    done = {"executions": "their executions have ended",
            "claimed": "none of the wave's rows is NONE any more",
            "embedded": "none of the wave's rows is NONE or PENDING any more"}[cfg.wave_done]
    return (f"in waves of {plural(cfg.wave_size or 0, 'image')}: after each wave, rounds of the "
            f"workflows {', '.join(cfg.workflows)} (input {{}}, one execution per workflow at a "
            f"time) every {format_duration(cfg.round_interval)} until {done}")


# =============================================================================
# 11. Undo: a journal read back
# =============================================================================


@dataclasses.dataclass(frozen=True)
class JournalEntry:
    """One write a journaled run made (or was about to make when it stopped)."""
    pk: str
    sk: str
    op: str                                   # put | delete
    before: dict[str, AttributeValue] | None  # prod's item before it (None: there was none)
    after: str | None                         # the digest of the item put (None: deleted)


def read_journal(path: Path, cfg: Config, region: str | None) -> tuple[int, list[JournalEntry]]:
    """(runs, entries) of the whole journal, checked before anything is done: one that cannot
    be read, is cut off, is not a journal of this tool, or is another table's is refused
    (UsageError: exit 2), so it is never half applied."""
    where = f"--undo {path}"
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UsageError(f"{where}: cannot read: {describe_error(exc)}") from None
    if not data.endswith(b"\n"):
        raise UsageError(f"{where}: " + ("empty: not a journal" if not data else
                         "cut off (its last line is incomplete): refusing to apply part of it; a "
                         "run killed while recording never sent that batch: remove the incomplete "
                         "line and undo again"))
    runs, entries = 0, []
    for n, line in enumerate(data.split(b"\n")[:-1], 1):
        try:
            record = json.loads(line)
            if not isinstance(record, dict):
                raise ValueError("not an object")
            if "journal" in record:
                check_journal_header(record, cfg, region, where, n)
                runs += 1
                continue
            if n == 1:
                raise UsageError(f"{where}: not a journal of this tool (no journal header)")
            entries.append(journal_entry(record))
        except (ValueError, KeyError, TypeError, AttributeError):
            raise UsageError(f"{where} line {n}: " + ("not a journal of this tool" if n == 1 else
                             "damaged (not a journal record): refusing to apply any of it")) from None
    return runs, entries


def check_journal_header(header: Mapping[str, Any], cfg: Config, region: str | None, where: str,
                         n: int) -> None:
    """A journal is applied only to the table it was written for: the same name, endpoint
    (any trailing slash aside) and, where both are known, region."""
    if header.get("journal") != JOURNAL_FORMAT or header.get("version") != JOURNAL_VERSION:
        raise UsageError(f"{where} line {n}: not a journal this version reads "
                         f"({header.get('journal')!r} version {header.get('version')!r})")

    def place(table: Any, endpoint: Any, region: Any) -> tuple[Any, ...]:
        return (table, (endpoint or "").rstrip("/") or None, region)

    theirs = place(header.get("table"), header.get("endpoint_url"), header.get("region"))
    ours = place(cfg.table, cfg.endpoint_url, region)
    if theirs[:2] != ours[:2] or (theirs[2] and ours[2] and theirs[2] != ours[2]):
        def text(p: tuple[Any, ...]) -> str:
            return f"table {p[0]!r} at {p[1] or 'AWS'}" + (f", region {p[2]}" if p[2] else "")
        raise UsageError(f"{where}: a journal of {text(theirs)}, not of {text(ours)}: refusing to "
                         "apply it here")


def journal_entry(record: Mapping[str, Any]) -> JournalEntry:
    pk, sk, op, before, after = (record["PK"], record["SK"], record["op"], record["before"],
                                 record["after"])
    if not (isinstance(pk, str) and isinstance(sk, str) and op in ("put", "delete")
            and (after is None or isinstance(after, str)) and (op == "put") == (after is not None)):
        raise ValueError("bad record")
    item = item_from_json(before) if before is not None else None
    if item is not None and (item_key(item) != (pk, sk)):
        raise ValueError("key mismatch")
    return JournalEntry(pk, sk, op, item, after)


@dataclasses.dataclass
class UndoResult:
    """What --undo did (or, in a dry run, would do) with a journal."""
    journal: str
    runs: int = 0
    records: int = 0
    images: int = 0
    to_restore: int = 0     # put back as prod held it before the run
    to_delete: int = 0      # added by the run: removed
    restored: int = 0
    deleted: int = 0
    already: int = 0        # prod holds what it held before the run
    conflicts: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    errors: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    images_done: int = 0
    interrupted: bool = False
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock, repr=False)

    @property
    def failed(self) -> bool:
        return bool(self.conflicts or self.errors or self.interrupted)

    def to_json(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in (
            "journal", "runs", "records", "images", "to_restore", "to_delete", "restored", "deleted",
            "already", "conflicts", "errors", "images_done", "interrupted")}


def undo_decision(chain: Sequence[JournalEntry], current: Mapping[str, AttributeValue] | None
                  ) -> tuple[str, str]:
    """(action, why) for one key: "already" (prod holds its state before the run), "restore"
    or "delete" (prod holds what a journaled write left, or what it was about to replace),
    "conflict" (prod holds something else: changed since; left alone). Compared without prod's
    own embedding progress, so a row the pipeline moved on still counts as the run's."""
    target = chain[0].before
    now = item_digest(current)
    if now == item_digest(target):
        return "already", ""
    # Newest write first: prod holds what it left (step back to what it found), or what it
    # found (recorded, never sent: skip it); anything else was changed by someone else, also
    # between two journaled runs, and is left alone.
    state = now
    for entry in reversed(chain):
        if state == entry.after:
            state = item_digest(entry.before)
        elif state != item_digest(entry.before):
            return "conflict", ("deleted since the run" if current is None else "changed since the run")
    return ("restore" if target is not None else "delete"), ""


class Undoer:
    """--undo: per image (the journal's keys by PK), read prod's items under its keys, decide
    each key (undo_decision), then write: restores, deletes, the IMAGE item last, like a copy.
    Images go `--max-workers` at a time, in waves of --wave-size with the queue gates before
    each; --max-items-per-second paces the writes. Deciding again on every run makes it
    repeatable: what is undone already is "already"."""

    def __init__(self, cfg: Config, prod: ProdTable, queues: Queues, result: UndoResult) -> None:
        self.cfg, self.prod, self.queues, self.result = cfg, prod, queues, result

    def images(self, entries: Sequence[JournalEntry]) -> list[list[list[JournalEntry]]]:
        """Per image (first seen first), its keys' chains of entries, in journal order."""
        by_pk: dict[str, dict[str, list[JournalEntry]]] = {}
        for e in entries:
            by_pk.setdefault(e.pk, {}).setdefault(e.sk, []).append(e)
        return [list(chains.values()) for chains in by_pk.values()]

    def run(self, images: Sequence[list[list[JournalEntry]]], apply: bool) -> None:
        size = self.cfg.wave_size or max(1, len(images))
        with ThreadPoolExecutor(self.cfg.max_workers, thread_name_prefix="undo") as pool:
            for wave in batches(images, size):
                if apply and self.queues.wanted:
                    self.gate_queues()
                futures = [pool.submit(self.undo_image, chains, apply) for chains in wave]
                try:
                    for future in futures:
                        future.result()
                except BaseException:
                    for future in futures:
                        future.cancel()
                    raise

    def undo_image(self, chains: Sequence[list[JournalEntry]], apply: bool) -> None:
        pk = chains[0][0].pk
        try:
            keys = [{"PK": {"S": c[0].pk}, "SK": {"S": c[0].sk}} for c in chains]
            current = {item["SK"]["S"]: item for chunk in batches(keys, GET_BATCH_SIZE)
                       for item in self.prod.read_keys(chunk)}
            restores, deletes = [], []
            for chain in chains:
                action, why = undo_decision(chain, current.get(chain[0].sk))
                if action == "restore":
                    restores.append(cast("dict[str, AttributeValue]", chain[0].before))
                elif action == "delete":
                    deletes.append({"PK": {"S": pk}, "SK": {"S": chain[0].sk}})
                else:
                    self.count(already=action == "already")
                    if action == "conflict":
                        log.warning("undo: %s %s %s: left alone", pk, chain[0].sk, why)
                        with self.result.lock:
                            self.result.conflicts.append({"PK": pk, "SK": chain[0].sk, "reason": why})
            self.count(to_restore=len(restores), to_delete=len(deletes))
            if apply:
                self.write(restores, deletes)
            self.count(images_done=1)
        except WriteError as exc:
            self.error(pk, str(exc))
        except Exception as exc:
            if botocore_setup_error(exc):
                raise
            self.error(pk, describe_error(exc))

    def write(self, restores: list[dict[str, AttributeValue]],
              deletes: list[dict[str, AttributeValue]]) -> None:
        """Children before the IMAGE item: restores, then deletes, then the IMAGE item."""
        last = [("put", i) for i in restores if i["SK"]["S"] == "IMAGE"] + \
            [("delete", i) for i in deletes if i["SK"]["S"] == "IMAGE"]
        for stage in ([("put", i) for i in restores if i["SK"]["S"] != "IMAGE"],
                      [("delete", i) for i in deletes if i["SK"]["S"] != "IMAGE"], last):
            for batch in batches(stage):
                puts = [i for op, i in batch if op == "put"]
                gone = [i for op, i in batch if op == "delete"]
                self.prod.write(puts, gone)
                self.count(restored=len(puts), deleted=len(gone))

    def count(self, **amounts: int) -> None:
        with self.result.lock:
            for name, n in amounts.items():
                setattr(self.result, name, getattr(self.result, name) + n)

    def error(self, pk: str, message: str) -> None:
        log.error("undo: %s: %s", pk, message)
        with self.result.lock:
            self.result.errors.append({"PK": pk, "message": message})

    def gate_queues(self) -> None:
        """Before each wave: any message in a dead-letter queue stops the undo; a --queue
        deeper than --max-queue-depth is waited for (at most --wave-timeout)."""
        began, delays, announced = time.monotonic(), poll_delays(*poll_schedule(os.environ)), False
        while True:
            dead = {q: n for q, n in self.queues.depths(self.queues.dead).items() if n}
            if dead:
                raise FatalError("; ".join(f"dead-letter queue {q} holds {plural(n, 'message')}"
                                           for q, n in dead.items())
                                 + ": undo stopped; run the same --undo again once it is empty")
            deep = {q: n for q, n in self.queues.depths(self.queues.live).items()
                    if n > self.cfg.max_queue_depth}
            if not deep:
                return
            waited = time.monotonic() - began
            if waited > self.cfg.wave_timeout:
                raise FatalError(f"queues still deep after {format_duration(waited)} (--wave-timeout): "
                                 "undo stopped; run the same --undo again")
            if not announced:
                print("Waiting until " + "; ".join(f"queue {q} ({n:,} messages)" for q, n in deep.items())
                      + f" holds at most {self.cfg.max_queue_depth:,} messages")
                announced = True
            time.sleep(next(delays))


def run_undo(cfg: Config, report: Report, prod: ProdTable) -> None:
    """--undo JOURNAL: read it all (refused whole if damaged), decide every key against prod
    now, and (live, confirmed) write. A dry run decides and writes nothing."""
    assert cfg.undo is not None
    result = report.undo = UndoResult(str(cfg.undo))
    result.runs, entries = read_journal(cfg.undo, cfg, report.region[0] if report.region else cfg.region)
    result.records = len(entries)
    queues = Queues(cfg)
    undoer = Undoer(cfg, prod, queues, result)
    images = undoer.images(entries)
    result.images = len(images)
    print(f"Mode: {'DRY RUN (nothing is written; --no-dry-run undoes)' if cfg.dry_run else 'LIVE'}")
    print(f"Undo: {cfg.undo} ({plural(result.runs, 'run')}, {plural(result.records, 'write')}, "
          f"{plural(result.images, 'image')}) in table {cfg.table}"
          + (f" at {cfg.endpoint_url}" if cfg.endpoint_url else ""))
    if queues.wanted:
        queues.connect()
    asks = not cfg.dry_run and not cfg.yes
    if asks and not sys.stdin.isatty():
        raise UsageError("a live undo needs confirmation: run it on a terminal or pass --yes")
    try:
        if cfg.dry_run or asks:
            undoer.run(images, apply=False)
        if asks:
            print(f"About to undo in table {cfg.table!r}: restore {result.to_restore:,} item(s), delete "
                  f"{result.to_delete:,}; {result.already:,} already as before the run, "
                  f"{len(result.conflicts):,} changed since (left alone)")
            try:
                answer = input("Type 'yes' to continue: ")
            except KeyboardInterrupt as exc:
                print()
                raise Stopped.by(exc, "stopped at the confirmation prompt: nothing was written") from None
            if answer.strip().lower() not in ("y", "yes"):
                raise UsageError("aborted: not confirmed")
            fresh = UndoResult(result.journal, result.runs, result.records, result.images)
            result = report.undo = undoer.result = fresh
        if not cfg.dry_run:
            undoer.run(images, apply=True)
    except KeyboardInterrupt as exc:
        result.interrupted = True
        print("\n".join(undo_summary(cfg, result)))
        raise Stopped.by(exc, f"stopped: {result.images_done:,} of {plural(result.images, 'image')} "
                              "undone; run the same --undo again to finish (it is repeatable)") from None
    print("\n".join(undo_summary(cfg, result)))


def undo_summary(cfg: Config, result: UndoResult) -> list[str]:
    dry = cfg.dry_run

    def line(label: str, n: int) -> str:
        return f"{label + ':':<44}{n:>10,}"

    lines = [line("Journaled writes", result.records), line("Images", result.images),
             line("Items to restore", result.to_restore), line("Items to delete", result.to_delete)]
    if not dry:
        lines += [line("Items restored", result.restored), line("Items deleted", result.deleted)]
    lines += [line("Items already as before the run", result.already),
              line("Conflicts (changed since, left alone)", len(result.conflicts))]
    lines += [f"  {c['PK']} {c['SK']}: {c['reason']}" for c in result.conflicts[:10]]
    if len(result.conflicts) > 10:
        lines.append(f"  ... and {len(result.conflicts) - 10:,} more (see --report)")
    if result.errors:
        lines.append(line("Images failed", len(result.errors)))
        lines += [f"  {e['PK']}: {e['message']}" for e in result.errors[:10]]
    if result.interrupted:
        lines.append(f"Interrupted after {result.images_done:,} of {result.images:,} images")
    return lines


# =============================================================================
# 12. Read-only operations: status, verify
# =============================================================================


@dataclasses.dataclass
class StatusResult:
    """--status: receipt lines/words still NONE, in the whole table or in the selected images."""
    scope: str
    lines_none: int
    words_none: int
    images: int | None = None             # the images counted (None: the whole table)
    not_found: list[str] | None = None    # ids asked for that the source lacks
    # --copy-objects with an export: {referenced, missing_in_prod} of its images' objects
    objects: dict[str, int] | None = None

    @property
    def failed(self) -> bool:
        return bool(self.not_found)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"scope": self.scope, "lines_none": self.lines_none,
                               "words_none": self.words_none}
        if self.objects is not None:
            out["objects"] = self.objects
        if self.not_found is not None:
            out["not_found"] = self.not_found
        return out


def run_status(cfg: Config, prod: ProdTable) -> StatusResult:
    image_ids, absent = None, []
    if cfg.export_dir_given or cfg.other_source or cfg.image_ids is not None:
        sources = select_sources(cfg)
        # An id the source lacks was never copied: 0 waiting would read as "done".
        absent = [s for s in sources if s.absent]
        for s in absent:
            log.error("%s: %s", s.name, s.absent)
        image_ids = [s.image_id for s in sources if not s.absent]
    counts = prod.count_waiting(image_ids)
    scope = ("whole table" if image_ids is None else
             f"{plural(len(image_ids), 'image')} of {source_name(cfg)}"
             + (f"; {len(absent):,} not in it" if absent else ""))
    print(f"Embedding status in {prod.name} ({scope}), GSI1 EMBEDDING_STATUS#NONE:")
    print(f"  receipt lines waiting: {counts['lines']:,}")
    print(f"  receipt words waiting: {counts['words']:,}")
    result = StatusResult(scope, counts["lines"], counts["words"],
                          None if image_ids is None else len(image_ids),
                          None if image_ids is None else [s.image_id for s in absent])
    if cfg.copy_objects and image_ids is not None:
        result.objects = count_missing_objects(cfg, [s for s in sources if not s.absent])
        print(f"  objects missing in prod's buckets: {result.objects['missing_in_prod']:,} of "
              f"{result.objects['referenced']:,} referenced")
    return result


def count_missing_objects(cfg: Config, sources: Sequence[ImageSource]) -> dict[str, int]:
    """--status --copy-objects: of the objects these images' items point to, how many the
    prod buckets lack (HeadObject; an image that cannot be read counts no object)."""
    rules, buckets = Rules.from_config(cfg), Buckets(cfg)

    def refs(source: ImageSource) -> list[ObjectRef]:
        try:
            return convert_source(source, rules, cfg.ignore_unknown).objects
        except InputError as exc:
            log.error("%s", format_error(exc.record(source)))
            return []

    with ThreadPoolExecutor(cfg.max_workers, thread_name_prefix="status") as pool:
        every = [r for found in pool.map(refs, sources) for r in found]
        missing = sum(pool.map(lambda r: buckets.head(r.target, r.key) is None, every))
    return {"referenced": len(every), "missing_in_prod": missing}


@dataclasses.dataclass
class VerifyResult:
    """--verify: every selected image compared with prod; each checked, not checked (it could
    not be read) or skipped (no receipts)."""
    images: int = 0
    checked: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    not_checked: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    skipped_empty: int = 0
    interrupted: bool = False

    @property
    def problems(self) -> list[dict[str, Any]]:
        return [r for r in self.checked if r["missing"] or r["different"] or r.get("objects")]

    @property
    def failed(self) -> bool:
        return bool(self.problems or self.not_checked or self.interrupted)

    def image_counts(self) -> dict[str, int]:
        return {"total": self.images, "checked": len(self.checked),
                "not_checked": len(self.not_checked), "skipped_empty": self.skipped_empty}

    def to_json(self) -> dict[str, Any]:
        if self.interrupted:
            return {"images_checked": len(self.checked), "interrupted": True}
        return {"images_checked": len(self.checked), "images_with_problems": len(self.problems),
                "images_not_checked": len(self.not_checked),
                "images_skipped_empty": self.skipped_empty,
                "problems": self.problems, "not_checked": self.not_checked}


def verify_image(cfg: Config, prod: ProdTable, rules: Rules, source: ImageSource,
                 buckets: Buckets | None = None) -> dict[str, Any]:
    """Compare one exported image with prod by the copy's own diff (prod-owned embedding
    fields excepted); with --copy-objects also its objects (in the prod bucket, with the
    source's size). An image that cannot be read (or whose prod items cannot be) is not
    checked: it gets an "error"."""
    name = source.name
    try:
        image = convert_source(source, rules, cfg.ignore_unknown)
    except InputError as exc:
        return {"file": name, "image_id": source.image_id, "error": format_error(exc.record(source))}
    if not image.has_receipts and not cfg.include_empty:
        return {"file": name, "image_id": image.image_id, "skipped": "no receipts"}
    try:
        versions = prod.read_versions(image.items)
    except Exception as exc:
        return {"file": name, "image_id": image.image_id,
                "error": f"{name}: cannot read prod: {describe_error(exc)}"}
    diff = diff_with_prod(image.items, versions, overwrite_changed=False)
    result = {"file": name, "image_id": image.image_id, "items": len(image.items),
              "missing": [item["SK"]["S"] for item in diff.missing],
              "different": [{"SK": c["SK"], "attributes": c["attributes"]} for c in diff.conflicts]}
    if buckets is not None:
        try:
            problems = (object_problem(buckets, ref) for ref in image.objects)
            result["objects"] = [p for p in problems if p]
        except Exception as exc:
            if botocore_setup_error(exc):
                raise
            return {"file": name, "image_id": image.image_id,
                    "error": f"{name}: cannot read the S3 objects: {describe_error(exc)}"}
    return result


def object_problem(buckets: Buckets, ref: ObjectRef) -> dict[str, Any] | None:
    """An object a prod item points to that the prod bucket lacks, or holds with another size
    than the dev bucket's."""
    target = buckets.head(ref.target, ref.key)
    source = buckets.head(ref.source, ref.key, source=True)
    where = f"s3://{ref.target}/{ref.key}"
    if target is None:
        return {"object": where, "problem": "missing in prod"}
    if source is not None and source.get("ContentLength") != target.get("ContentLength"):
        return {"object": where, "problem": f"{target.get('ContentLength')} bytes, the dev bucket's "
                                            f"{source.get('ContentLength')}"}
    return None


def run_verify(cfg: Config, origin: ConfigOrigin, prod: ProdTable, result: VerifyResult) -> None:
    """Fill `result` (the report holds it, so an interrupted verify reports what it checked)."""
    sources = select_sources(cfg)
    rules = Rules.from_config(cfg)
    result.images = len(sources)
    buckets = Buckets(cfg) if cfg.copy_objects else None
    pool = ThreadPoolExecutor(cfg.max_workers, thread_name_prefix="verify")
    try:
        for r in pool.map(lambda s: verify_image(cfg, prod, rules, s, buckets), sources):
            if "items" in r:
                result.checked.append(r)
            elif "error" in r:
                result.not_checked.append(r)
            else:
                result.skipped_empty += 1
    except KeyboardInterrupt as exc:  # verify writes nothing: in-flight reads need not finish
        prod.stop.set()
        result.interrupted = True
        raise Stopped.by(exc, f"verify interrupted: {len(result.checked):,} of "
                              f"{plural(len(sources), 'image')} checked (--verify writes nothing; "
                              "run it again to check every image)") from None
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    print_verify(cfg, origin, prod, result)


def print_verify(cfg: Config, origin: ConfigOrigin, prod: ProdTable, result: VerifyResult) -> None:
    images = result.image_counts()
    problems = result.problems
    # One line whose numbers add up: every image is checked, not checked or skipped.
    print(f"Verify: {plural(images['total'], 'image')} in {source_name(cfg)}: {images['checked']:,} "
          f"checked against {prod.name}" + (" and its buckets" if cfg.copy_objects else "")
          + f" ({len(problems):,} of them with missing or different "
          f"{'items or objects' if cfg.copy_objects else 'items'}), {images['not_checked']:,} not "
          "checked (could not be read"
          + (": listed below" if images["not_checked"] else "")
          + f"), {images['skipped_empty']:,} skipped (no receipts)")
    for r in problems:
        print(f"  {r['image_id']}: {len(r['missing']):,} missing, {len(r['different']):,} different"
              + (f", {len(r['objects']):,} object(s) not in prod as in dev" if r.get("objects") else ""))
        for sk in r["missing"][:20]:
            print(f"    missing   {sk}")
        for d in r["different"][:20]:
            print(f"    different {d['SK']}: {', '.join(d['attributes'])}")
        for o in r.get("objects", [])[:20]:
            print(f"    object    {o['object']}: {o['problem']}")
    if result.not_checked:
        print("Not checked (could not be read):")
        for r in result.not_checked:
            print(f"  {r['error']}")
    if any(r["missing"] for r in problems):
        print(f"To write the missing items: {repair_command(origin, overwrite=False)}")
    if any(r.get("objects") for r in problems):  # the argv has --copy-objects already
        print(f"To copy the missing objects: {repair_command(origin, overwrite=False)}")
    if any(r["different"] for r in problems):
        print("To overwrite prod's differing items with the export's: "
              f"{repair_command(origin, overwrite=True)}")


# =============================================================================
# 13. Report
# =============================================================================


class Report:
    """What the run did, rendered from who knows it: the plan's decisions and the copier's tally
    (a copy), the waves, and the read-only operations' results; printed as a summary and
    written as JSON. A dry run and a live run fill the same fields (a dry run writes nothing,
    so `written` is 0). A run that copies nothing has no copy outcomes: its `images` are the
    operation's own counts (--verify: checked, not_checked, skipped_empty, adding up to total;
    --status with an export: total), or null (--status of the whole table,
    --trigger-embeddings)."""

    # Every selected image gets exactly one of these: from the plan (skipped, failed, left for
    # later) or from the copier (copied, skipped when prod held everything, failed);
    # "interrupted" is what is left: images the run was stopped before finishing.
    OUTCOMES = ("copied", "skipped_existing", "skipped_empty", "failed", "not_reached_limit",
                "deleted", "protected", "not_in_prod", "interrupted")
    SHOWN_CONFLICTS = 10
    SHOWN_ERRORS = 50

    def __init__(self, cfg: Config, prod: ProdTable | None = None) -> None:
        self.cfg = cfg
        self.mode = cfg.mode
        self.plan: RunPlan | None = None
        self.tally = Tally()                     # the copier's, every wave's added up
        self.waves: WaveRun | None = None
        self.status: StatusResult | None = None
        self.verify: VerifyResult | None = None
        self.trigger: TriggerResult | None = None
        self.undo: UndoResult | None = None
        self.journal: Journal | None = None
        self.operation_errors: list[dict[str, str]] = []
        # (region, where it came from) of the clients this run made; None until one is made.
        self.region: tuple[str, str] | None = None
        self.prod_checked = prod is not None  # a copy or dry run with a table, --verify, --status
        self.capacity = prod.capacity if prod is not None else CapacityMeter()
        self.copy_started = False
        self.interrupted = False
        self.report_error: str | None = None  # why --report could not be written
        self.summary_printed = False
        self.started = time.time()

    def image_counts(self) -> dict[str, int]:
        settled = self.plan.outcomes() if self.plan else Counter()
        counts = {"total": len(self.plan.sources) if self.plan else 0}
        for outcome in self.OUTCOMES[:-1]:
            counts[outcome] = settled[outcome] + self.tally.images[outcome]
        counts["interrupted"] = counts["total"] - sum(counts[k] for k in self.OUTCOMES[:-1])
        return counts

    def item_counts(self) -> dict[str, int]:
        """Every planned item is decided once (to write, unchanged, prod's progress kept, or a
        conflict prod keeps) or was never decided: its image failed before the diff, or the
        run was stopped before it (what is left, like the images' "interrupted")."""
        counts = {k: self.tally.items[k] for k in Tally.ITEMS}
        kept = 0 if self.cfg.overwrite_changed else counts["conflicts"]  # else they are to_write
        decided = counts["to_write"] + counts["unchanged"] + counts["prod_progress_kept"] + kept
        counts["interrupted_before_diff"] = counts["planned"] - decided - counts["failed_before_diff"]
        return counts

    def errors(self) -> list[dict[str, Any]]:
        return (self.plan.errors() if self.plan else []) + self.tally.errors

    def actions(self) -> list[dict[str, Any]]:
        """--mirror/--delete-missing: what happened to each image, in the plan's order."""
        decided = self.plan.decided if self.plan else []
        protected = [{"image_id": p.image_id, "action": "PROTECTED", "put": 0, "delete": 0,
                      "unchanged": 0} for p in decided if p.outcome == "protected"]
        order = {p.image_id: n for n, p in enumerate(decided)}
        return sorted(protected + self.tally.actions, key=lambda a: order.get(a["image_id"], len(order)))

    def failed_images(self) -> list[str]:
        planned = [p.image_id for p in self.plan.decided if p.outcome == "failed"] if self.plan else []
        return planned + self.tally.failed_images

    @property
    def failed(self) -> bool:
        """An image failed, the run was stopped, or (a dry run) the live run would stop."""
        blocked = self.waves is not None and self.waves.blocked is not None
        return self.image_counts()["failed"] > 0 or self.interrupted or blocked

    @property
    def operations_failed(self) -> bool:
        return bool(self.operation_errors or (self.status and self.status.failed)
                    or (self.verify and self.verify.failed) or (self.trigger and self.trigger.refused)
                    or (self.undo and self.undo.failed))

    def operation_images(self) -> dict[str, int] | None:
        """A run that copies nothing: the images its operation counted, if any."""
        if self.verify is not None and not self.verify.interrupted:
            return self.verify.image_counts()
        if self.status is not None and self.status.images is not None:
            return {"total": self.status.images}
        return None

    def to_json(self) -> dict[str, Any]:
        cfg, tally = self.cfg, self.tally
        out: dict[str, Any] = {
            "tool_version": __version__,
            "mode": self.mode,
            "table": cfg.table,
            "endpoint_url": cfg.endpoint_url,
            "region": self.region[0] if self.region else cfg.region,
            "export_dir": str(cfg.export_dir),
            "source": describe_source(cfg),
            "prod_checked": self.prod_checked,
            "started_at": dt.datetime.fromtimestamp(self.started, dt.timezone.utc).isoformat(),
            "elapsed_seconds": round(time.time() - self.started, 3),
            "images": self.image_counts() if cfg.copies else self.operation_images(),
            "entities": dict(tally.entities),
            "items": self.item_counts(),
            "capacity": self.capacity.to_json(),
            "excluded": dict(tally.excluded),
            "ignored": dict(tally.ignored),
            "other_types": dict(tally.other_types),
            "errors": self.errors(),
            "failed_images": self.failed_images(),
            "conflicts": tally.conflicts,
            "interrupted": self.interrupted,
            "operations_failed": self.operations_failed,
        }
        if cfg.copy_objects:
            out["objects"] = {k: tally.objects[k] for k in (
                "referenced", "copied", "already_present", "missing_in_source", "bytes_copied",
                *(("to_copy", "bytes_to_copy") if cfg.dry_run else ()))}
            out["objects"]["checked"] = self.prod_checked  # a dry run without a table only counts
            out["missing_objects"] = tally.missing_objects
        if cfg.mirror or cfg.delete_missing or cfg.protect:
            out["actions"] = self.actions()
        if cfg.mirror or cfg.delete_missing:
            out["prod_other_types"] = dict(tally.prod_other_types)
        if cfg.destructive:
            out["journal"] = str(self.journal.path) if self.journal else None
        if self.undo is not None:
            out["undo"] = self.undo.to_json()
        if self.waves is not None:
            out["wave_plan"], out["waves"] = self.waves.plan_json(), self.waves.waves_json()
        if self.status is not None:
            out["status"] = self.status.to_json()
        if self.verify is not None:
            out["verify"] = self.verify.to_json()
        if self.trigger is not None and not cfg.dry_run and not self.trigger.refused:
            out["embeddings"] = self.trigger.started
        if self.operation_errors:
            out["operation_errors"] = self.operation_errors
        return out

    def write_json(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_json(), indent=2, ensure_ascii=False) + "\n",
                        encoding="utf-8")

    def print_summary(self) -> None:
        """Once, and only for a copy that started (not after a configuration error)."""
        if self.copy_started and not self.summary_printed:
            self.summary_printed = True
            print("\n".join(self.summary_lines()))

    def summary_lines(self) -> list[str]:
        dry = self.mode == "dry-run"
        im, it = self.image_counts(), self.item_counts()

        def line(label: str, n: float, note: str = "") -> str:
            return f"{label + ':':<44}{n:>10,}" + (f"  {note}" if note else "")

        copied = "add or update" if self.cfg.mirror else "copy"
        lines = [line("Images found", im["total"]),
                 line(f"Would {copied}" if dry else ("Added or updated" if self.cfg.mirror else "Copied"),
                      im["copied"]),
                 # --no-skip-existing compared them with prod: nothing differed
                 line("Skipped (already in prod)" if self.cfg.skip_existing
                      else "Already in prod, nothing to write", im["skipped_existing"]),
                 line("Skipped (no receipts)", im["skipped_empty"]),
                 line("Failed", im["failed"])]
        if self.cfg.delete_missing:
            lines.append(line("Would delete (not in the source)" if dry else "Deleted (not in the source)",
                              im["deleted"]))
            if im["not_in_prod"]:
                lines.append(line("To delete, but not in prod", im["not_in_prod"]))
        if im["protected"]:
            lines.append(line("Protected (--protect), left alone", im["protected"]))
        if self.cfg.mirror or self.cfg.delete_missing:
            actions = Counter(a["action"] for a in self.actions())
            lines.append("Images by action: " + (", ".join(f"{k} {actions[k]:,}" for k in (
                "ADD", "UPDATE", "DELETE", "UNCHANGED", "PROTECTED", "ABSENT") if actions[k]) or "none"))
        if im["interrupted"]:
            lines.append(line("Interrupted (no IMAGE item yet)", im["interrupted"],
                              "re-run the same command to finish them"))
        if im["not_reached_limit"]:
            lines.append(line("Left for later (--limit)", im["not_reached_limit"],
                              "each live run copies the next ones" if dry
                              else "run the same command again for the next ones"))
        lines.append(line("Items planned", it["planned"]))
        lines.append(line("Items to write", it["to_write"]))
        if not dry:
            lines.append(line("Items written", it["written"]))
            if it["to_write"] > it["written"]:
                lines.append(line("Items not written", it["to_write"] - it["written"],
                                  "stopped before they were sent; re-run the same command"
                                  if self.interrupted else "their images failed (see Errors)"))
        if self.cfg.mirror or self.cfg.delete_missing:
            lines.append(line("Items to delete", it["to_delete"]))
            if not dry:
                lines.append(line("Items deleted", it["deleted"]))
        if self.prod_checked:
            decision = ("overwritten" if self.cfg.overwrite_changed
                        else "kept unless --overwrite-changed" if dry else "prod's version kept")
            lines += [line("Items unchanged", it["unchanged"]),
                      line("Items kept (prod's embedding progress)", it["prod_progress_kept"]),
                      line("Conflicts", it["conflicts"], f"({decision})" if it["conflicts"] else "")]
        # Items planned but never diffed: with these the item lines add up to "Items planned".
        if it["failed_before_diff"]:
            lines.append(line("Items not decided (image failed first)", it["failed_before_diff"]))
        if it["interrupted_before_diff"]:
            lines.append(line("Items not decided (stopped first)", it["interrupted_before_diff"],
                              "their images are interrupted"))
        if self.prod_checked:
            capacity = self.capacity
            lines.append(f"{'Capacity used:':<44}{capacity.write_units:>10,.1f} write units, "
                         f"{capacity.read_units:,.1f} read units")
        elif dry:
            lines.append("Prod not checked (no table given): every image and item counts as new")
        lines += self.entity_lines() + self.conflict_lines() + self.error_lines()
        if self.waves is not None:
            lines += wave_summary_lines(self.waves.plan_json(), self.waves.waves_json())
        elapsed = time.time() - self.started
        done = it["planned"] if dry else it["written"]
        lines.append(f"Elapsed {elapsed:,.1f} s, {done / elapsed if elapsed else 0:,.0f} items/s "
                     f"{'planned' if dry else 'written'}")
        if self.cfg.copy_objects:
            lines.append(self.objects_line())
        if self.journal:
            lines.append(f"Journal: {self.journal.path} ({plural(self.journal.records, 'write')} "
                         f"recorded; --undo {self.journal.path} puts prod back)")
        return lines  # the "Report:" line follows once the report is written (finish_report)

    def objects_line(self) -> str:
        o, dry = self.tally.objects, self.mode == "dry-run"
        text = f"Objects: {o['referenced']:,} referenced"
        if not self.prod_checked:
            return text + " (not checked: no prod table given)"
        copied = (f"{o['to_copy']:,} to copy ({o['bytes_to_copy']:,} bytes)" if dry
                  else f"{o['copied']:,} copied ({o['bytes_copied']:,} bytes)")
        return (f"{text}, {copied}, {o['already_present']:,} already in prod, "
                f"{o['missing_in_source']:,} missing in the source")

    def entity_lines(self) -> list[str]:
        tally, lines = self.tally, []
        if tally.entities:  # what the copied images hold (planned items include the others)
            lines.append("Entity counts (images to copy):" if self.mode == "dry-run"
                         else "Entity counts (images copied):")
            lines += [f"  {k.export_key}: {tally.entities[k.export_key]:,}" for k in KINDS
                      if k.export_key in tally.entities]
        for title, counts in (("Excluded (never copied):", tally.excluded),
                              ("Other types in image partitions (not exported, never copied):",
                               tally.other_types),
                              ("Other types in prod's partitions (never changed or deleted):",
                               tally.prod_other_types),
                              ("Ignored unknown lists (--ignore-unknown):", tally.ignored)):
            if counts:
                lines.append(title)
                lines += [f"  {k}: {n:,}" for k, n in sorted(counts.items())]
        return lines

    def conflict_lines(self) -> list[str]:
        conflicts = self.tally.conflicts
        if not conflicts:
            return []
        shown = conflicts[:self.SHOWN_CONFLICTS]
        lines = ["Conflicts (prod differs from the export):"]
        lines += [f"  {c['PK']} {c['SK']}: {', '.join(c['attributes'])}" for c in shown]
        where = f"--report {self.cfg.report}" if self.cfg.report else "a run with --report FILE"
        rest = len(conflicts) - len(shown)
        lines.append(f"  {f'... and {rest:,} more; ' if rest else ''}prod's and the export's values "
                     f"of every conflict: {where}")
        return lines

    def error_lines(self) -> list[str]:
        errors = self.errors()
        if not errors:
            return []
        lines = ["Errors:"] + [f"  {format_error(e)}" for e in errors[:self.SHOWN_ERRORS]]
        if len(errors) > self.SHOWN_ERRORS:
            lines.append(f"  ... and {len(errors) - self.SHOWN_ERRORS:,} more (see --report)")
        return lines


def wave_summary_lines(plan: Mapping[str, Any] | None, waves: Sequence[Mapping[str, Any]]) -> list[str]:
    """The summary's lines for --wave-size: one per wave (the plan, in a dry run)."""
    if plan is None:
        return []
    # A wave stopped at a gate before its copy never ran; wave 0 copies nothing.
    copying = [w for w in waves if w["index"]]
    ran = [w for w in copying if plan["dry_run"] or "images_copied" in w]
    lines = [f"Waves of up to {plural(plan['wave_size'], 'image')}: {len(ran):,} of {plan['waves']:,} "
             + ("planned" if plan["dry_run"] else "run")
             + (f" ({plural(plan['images'] - sum(w['images'] for w in ran), 'image')} in the waves not run)"
                if len(ran) < plan["waves"] else "")
             + f"; a wave is done when {WAVE_DONE_TEXT[plan['wave_done']]}"]
    if plan.get("would_stop"):
        lines.append(f"  the live run would stop before writing anything: {plan['would_stop']}")
    stops_at = 0
    for w in waves:
        count = f" of {plan['waves']}" if w["index"] else " (images already in prod)"
        text = f"  wave {w['index']}{count}: {plural(w['images'], 'image')}"
        if plan["dry_run"]:
            text += planned_wave_text(w, stops_at)
            stops_at = stops_at or (w["index"] if w.get("outcome") == "images failed" else 0)
        else:
            if w["index"]:
                text += f", {w.get('images_copied', 0):,} copied, {w.get('items_written', 0):,} items written"
            if w.get("rounds"):
                text += f"; {plural(len(w['rounds']), 'round')}"
                last = w["rounds"][-1].get("rows")
                if last:
                    text += (f", rows NONE {last['none']:,}, PENDING {last['pending']:,}, "
                             f"done {last['done']:,}")
            waited = sum(w.get("seconds_waited", {}).values())
            if waited:
                text += f"; waited {format_duration(waited)}"
            if w.get("seconds_to_done") is not None:
                text += f"; done after {format_duration(w['seconds_to_done'])}"
            if w.get("outcome") not in (None, "done"):
                text += f" [{w['outcome']}]"
        lines.append(text)
    return lines


WAVE_DONE_TEXT = {"executions": "its workflows' executions ended",
                  "claimed": "none of its rows is NONE",
                  "embedded": "none of its rows is NONE or PENDING"}


def planned_wave_text(w: Mapping[str, Any], stops_at: int) -> str:
    """What the live run will do in this wave, decided as it decides (WaveDriver.copy_wave)."""
    if w["index"] == 0:
        rows = w.get("rows_found", {})
        text = (f" whose rows are not done (NONE {rows.get('none', 0):,}, PENDING "
                f"{rows.get('pending', 0):,}): would run rounds of " + ", ".join(w["would_start"])
                + " before the first copy")
    elif w.get("outcome") == "images failed":
        text = (f", {w['items_to_write']:,} items to write, {w['images_failed']:,} failed: would start "
                "no workflows and stop the run here")  # the wave's other images are still copied
    elif w.get("would_start"):
        text = (f", {w['items_to_write']:,} items to write" if w["items_to_write"]
                else ", nothing to write but its rows are not done")
        text += "; would run rounds of " + ", ".join(w["would_start"]) + " (input {}) until the wave is done"
    else:
        text = ", nothing to write: would start no workflows"
    if stops_at:
        text += f" (not reached while wave {stops_at} fails)"
    return text


def plural(n: int, word: str) -> str:
    return f"{n:,} {word}{'' if n == 1 else 's'}"


def format_error(e: Mapping[str, Any]) -> str:
    where = ""
    if e.get("entity") is not None:
        where = e["entity"] if e.get("index") is None else f"{e['entity']}[{e['index']}]"
    if e.get("field") is not None:
        where += f" field {e['field']!r}"
    return f"{e['file']}: {where.strip()}{': ' if where else ''}{e['message']}"


# =============================================================================
# 14. Main
# =============================================================================


def setup_logging(verbose: bool) -> None:
    # Without tqdm (a dry run on a bare Python) log lines go straight to stderr.
    handler = TqdmLogHandler() if importlib.util.find_spec("tqdm") else logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    log.handlers[:] = [handler]
    log.setLevel(logging.DEBUG if verbose else logging.INFO)
    log.propagate = False
    # botocore's own debug output includes signed headers: never enable it.
    logging.getLogger("botocore").setLevel(logging.WARNING)


def print_header(cfg: Config, origin: ConfigOrigin, files: int, region: tuple[str, str] | None) -> None:
    if cfg.dry_run:
        print("Mode: DRY RUN")
        print("No records will be copied. Use --no-dry-run to actually copy.")
    else:
        print("Mode: LIVE")
    print(f"{describe_source(cfg)} ({plural(files, 'image' if cfg.other_source else 'file')}"
          + (f", shard {cfg.shard[0]}/{cfg.shard[1]}" if cfg.shard else "") + ")")
    if cfg.table:
        print(f"Prod table: {cfg.table}" + (f" at {cfg.endpoint_url}" if cfg.endpoint_url else "")
              + f" ({origin.of('table')})" + (f", region {region[0]} ({region[1]})" if region else ""))
    else:
        why = origin.missing.get("table", "none configured: --table, --prod-config or --prod-stack")
        print(f"Prod table: not checked ({why}): every image counts as not yet in prod")
    for kind, renames in (("raw", cfg.dev_raw_bucket), ("cdn", cfg.dev_cdn_bucket)):
        target = cfg.prod_raw_bucket if kind == "raw" else cfg.prod_cdn_bucket
        print(f"{kind.upper()} bucket: {renames} -> {target}" if renames
              else f"{kind.upper()} bucket: not rewritten (not configured)")
    if cfg.trigger_embeddings:
        print(sfn_endpoint_text(cfg, origin))
    if cfg.overwrite_changed and not cfg.mirror:
        print("Images already in prod: " + ("skipped (--skip-existing), so not overwritten"
              if cfg.skip_existing else "compared; items that differ are overwritten "
              "(--overwrite-changed)"))
    if cfg.mirror:
        print("Images already in prod: mirrored (--mirror): items that differ are overwritten, "
              "items the source lacks deleted, items of other types left alone")
    if cfg.protect:
        print(f"Protected (--protect): {plural(len(cfg.protect), 'image')}, never written or deleted")
    if cfg.destructive:
        print(f"Journal: {cfg.journal} (what is overwritten or deleted is recorded first; "
              f"--undo {cfg.journal} puts it back)" if not cfg.dry_run and cfg.journal
              else "Journal: none (a dry run writes nothing)")
    print()


def confirm_live_run(cfg: Config, origin: ConfigOrigin, plan: RunPlan,
                     region: tuple[str, str] | None) -> None:
    """On a terminal, show what the settled plan will do and ask."""
    name, where = region or ("?", "unknown")
    print(f"About to copy into table {cfg.table!r}, region {name} ({where}), "
          f"endpoint {cfg.endpoint_url or '(AWS)'}:")
    print("  " + plan.preview())
    if cfg.wave_size:
        print("  " + wave_preview(cfg))
    if cfg.trigger_embeddings:
        print("  " + sfn_endpoint_text(cfg, origin))
    try:
        answer = input("Type 'yes' to continue: ")
    except KeyboardInterrupt as exc:  # Ctrl-C (or SIGTERM) instead of an answer
        print()
        raise Stopped.by(exc, "stopped at the confirmation prompt: nothing was written") from None
    if answer.strip().lower() not in ("y", "yes"):
        raise UsageError("aborted: not confirmed")


def run_copy(cfg: Config, origin: ConfigOrigin, report: Report, prod: ProdTable | None) -> None:
    """Plan the run, ask (live, on a terminal), then copy: in waves, or straight through."""
    rules = Rules.from_config(cfg)
    sources = select_sources(cfg)
    check_export_side(cfg, origin, sources)
    deletions = deletion_sources(cfg, prod, sources)
    print_header(cfg, origin, len(sources), report.region)
    if cfg.delete_missing:
        print(f"Prod images the source lacks, to delete (--delete-missing): {len(deletions):,}\n")
    plan = report.plan = RunPlan(cfg, sources, prod, rules, deletions)
    asks = not cfg.dry_run and not cfg.yes
    if asks and not sys.stdin.isatty():
        raise UsageError("a live run needs confirmation: run it on a terminal or pass --yes")
    if asks or cfg.wave_size:  # both need every decision up front
        plan.settle()
    if asks and not plan.to_copy() and not cfg.wave_size and not cfg.trigger_embeddings:
        asks = False  # nothing to confirm: nothing will be written
        print(f"Nothing to copy ({plan.preview()}): not asking for confirmation")
    if asks:
        confirm_live_run(cfg, origin, plan, report.region)
    report.copy_started = True
    dump = DumpFile(cfg.dump_items)
    journal = report.journal = open_journal(cfg, report)
    try:
        buckets = Buckets(cfg) if cfg.copy_objects and prod is not None else None
        copier = Copier(cfg, rules, prod, dump, journal, buckets)
        if cfg.wave_size:
            report.waves = WaveRun(cfg.wave_size, cfg.dry_run, cfg.wave_done)
            waiter = Waiter(cfg.wave_timeout, poll=poll_schedule(os.environ),
                            status=StatusLine(cfg.progress))
            WaveDriver(cfg, plan, copier, Workflows(cfg), Queues(cfg), prod, report.tally,
                       report.waves, waiter).run()
        else:
            copier.run(plan.walk(), len(sources), report.tally)
    finally:
        dump.close()
        if journal:
            journal.close()
    dump.check()  # the dump's last lines failed to reach the disk
    if journal:
        journal.check()


def open_journal(cfg: Config, report: Report) -> Journal | None:
    """A live run that may overwrite or delete records what it does before it does it."""
    if cfg.dry_run or not cfg.destructive or cfg.journal is None:
        return None
    return Journal(cfg.journal, {
        "table": cfg.table, "endpoint_url": cfg.endpoint_url,
        "region": report.region[0] if report.region else cfg.region,
        "started_at": dt.datetime.now(dt.timezone.utc).isoformat(),
        "modes": [flag for flag, on in (("--mirror", cfg.mirror), ("--delete-missing", cfg.delete_missing),
                                        ("--overwrite-changed", cfg.overwrite_changed)) if on]})


def run_operations(cfg: Config, origin: ConfigOrigin, report: Report, prod: ProdTable | None) -> None:
    """Each requested operation runs; one that fails says why and the exit code says so."""
    def verify() -> None:
        assert prod is not None
        report.verify = VerifyResult()
        run_verify(cfg, origin, prod, report.verify)

    def status() -> None:
        assert prod is not None
        report.status = run_status(cfg, prod)

    def trigger() -> None:
        workflows = Workflows(cfg)
        report.trigger = trigger_embeddings(cfg, origin, workflows,
                                            report.failed, resolve_in_dry_run=prod is not None)
        if workflows.client is not None:
            report.region = report.region or client_region(cfg, workflows.client)

    operations = [(cfg.verify, "verify", verify), (cfg.status, "status", status),
                  # with waves, the waves started (or, in a dry run, planned) them
                  (cfg.trigger_embeddings and not cfg.wave_size, "trigger-embeddings", trigger)]
    for wanted, name, operation in operations:
        if not wanted:
            continue
        try:
            operation()
        except Exception as exc:
            if botocore_setup_error(exc):
                raise
            message = exc.args[0] if isinstance(exc, FatalError) else describe_error(exc)
            print(f"error: --{name} failed: {message}", file=sys.stderr)
            report.operation_errors.append({"operation": name, "message": message})


def stop_message(report: Report | None) -> str:
    if report is None or not report.copy_started:
        return "stopped: nothing was written"
    unfinished = report.image_counts()["interrupted"]
    if not unfinished:
        return "stopped after every image was finished: nothing is left to do"
    if report.cfg.mirror or report.cfg.delete_missing:  # their images are compared again
        return (f"stopped: {plural(unfinished, 'image')} not finished; re-run the same command to "
                "finish them (it compares them with prod again)")
    return (f"stopped: {plural(unfinished, 'image')} not finished (no IMAGE item yet); "
            "re-run the same command to finish them")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    signal.signal(signal.SIGTERM, raise_terminated)
    # SIGINT always stops cleanly, also where the process started with it ignored (a
    # background job of a script inherits SIG_IGN, and Python then keeps ignoring it).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    report: Report | None = None
    try:
        cfg, origin = resolve_config(args, os.environ, argv)
        warnings = check_config(cfg, origin)
        missing = missing_runtime_packages(cfg)
        if missing:
            raise UsageError(missing_package_message(missing))
        if cfg.progress and not importlib.util.find_spec("tqdm"):
            cfg.progress = False  # the standard-library-only dry run goes without bars
        for warning in warnings:
            log.warning("%s", warning)
        check_output_paths(cfg)
        prod = ProdTable(cfg) if cfg.reads_table else None
        if prod is not None:
            prod.check_readable(origin.of("table"))
        report = Report(cfg, prod)
        if prod is not None:
            report.region = client_region(cfg, prod.client)
        if cfg.copies:
            run_copy(cfg, origin, report, prod)
            report.print_summary()  # what was copied, before what the operations after it say
        elif cfg.undo:
            assert prod is not None
            run_undo(cfg, report, prod)
        run_operations(cfg, origin, report, prod)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (KeyboardInterrupt, Stopped) as exc:  # Ctrl-C or SIGTERM: in-flight batches have finished
        if report:
            report.interrupted = True
            finish_report(cfg, report)
        print(exc.explanation if isinstance(exc, Stopped) else stop_message(report), file=sys.stderr)
        terminated = exc.terminated if isinstance(exc, Stopped) else isinstance(exc, Terminated)
        return EXIT_TERMINATED if terminated else EXIT_INTERRUPTED
    except FatalError as exc:
        print(f"error: {exc}", file=sys.stderr)
        if report:
            finish_report(cfg, report)
        return EXIT_FAILED
    except Exception as exc:
        if botocore_setup_error(exc):
            print(f"error: {describe_error(exc)}", file=sys.stderr)
            return EXIT_USAGE
        if isinstance(exc, ModuleNotFoundError) and (exc.name or "").split(".")[0] in (
                *RUNTIME_PACKAGES, "botocore"):
            print(f"error: {missing_package_message([exc.name or ''])}", file=sys.stderr)
            return EXIT_USAGE
        raise
    return finish_report(cfg, report)


def finish_report(cfg: Config, report: Report) -> int:
    """Write the report, then print the summary. A report that cannot be written (disk full,
    its directory removed during the run) costs the file, never the summary, and exits 1."""
    if cfg.report:
        try:
            report.write_json(cfg.report)
        except OSError as exc:
            report.report_error = describe_error(exc)
    report.print_summary()
    if cfg.report and report.copy_started:
        print(f"Report: {cfg.report}" + (" (NOT written)" if report.report_error else ""))
    if report.report_error:
        print(f"error: --report {cfg.report}: cannot write: {report.report_error}; "
              "the summary above is this run's record", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_FAILED if report.failed or report.operations_failed else EXIT_OK


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BrokenPipeError:  # e.g. piped into `head`: not an error of the migration
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(EXIT_FAILED)
