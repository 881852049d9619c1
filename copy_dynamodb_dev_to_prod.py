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
  1. CLI and configuration
  2. Reading exports
  3. Entity schema (attribute codecs and one spec per entity kind)
  4. Transformation rules (migration rules, item building, item checks)
  5. Batch writing with retries
  6. Orchestration and progress
  7. Report
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import logging
import math
import os
import random
import re
import sys
import threading
import time
import zlib
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor
from decimal import ROUND_HALF_UP, Context, Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Optional, Sequence

__version__ = "1.0.0"

log = logging.getLogger("copy_dynamodb_dev_to_prod")

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2

# =============================================================================
# 1. CLI and configuration
# =============================================================================

DEFAULT_LINE_MACHINE = "embedding-infra-prod-line-workflow"
DEFAULT_WORD_MACHINE = "embedding-infra-prod-word-workflow"

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


class UsageError(Exception):
    """Bad flags or configuration: exit 2 before anything is done."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="copy_dynamodb_dev_to_prod.py",
        description="Migrate receipt-OCR data from a dev export into the prod DynamoDB table. "
        "Dry run by default.",
    )
    src = p.add_argument_group("input")
    src.add_argument("--export-dir", default="dev.export", type=Path,
                     help="directory of <image_id>.json export files (default: dev.export)")
    src.add_argument("--include-empty", action="store_true",
                     help="also copy images that have no receipts (skipped by default)")
    src.add_argument("--ignore-unknown", action="store_true",
                     help="skip export lists this tool does not know instead of failing the image")
    src.add_argument("--limit", type=int, metavar="N",
                     help="copy at most N images that are not yet in prod")
    src.add_argument("--shard", metavar="K/N", help="process only shard K of N (K = 0..N-1)")

    cfg = p.add_argument_group("configuration (flags win over config files, files over environment)")
    cfg.add_argument("--table", help=f"prod table name (env {ENV_VARS['table']})")
    cfg.add_argument("--dev-table", help=f"dev table name, used only to refuse copying into it "
                     f"(env {ENV_VARS['dev_table']})")
    cfg.add_argument("--dev-config", type=Path, metavar="FILE",
                     help="JSON of `pulumi stack output --json` for dev")
    cfg.add_argument("--prod-config", type=Path, metavar="FILE",
                     help="JSON of `pulumi stack output --json` for prod")
    for stage in ("dev", "prod"):
        for kind in ("raw", "cdn"):
            cfg.add_argument(f"--{stage}-{kind}-bucket",
                             help=f"{stage} {kind} S3 bucket (env {ENV_VARS[f'{stage}_{kind}_bucket']})")

    aws = p.add_argument_group("AWS connection")
    aws.add_argument("--region", help="AWS region (default: from the AWS configuration)")
    aws.add_argument("--profile", help="AWS profile name")
    aws.add_argument("--endpoint-url", help="DynamoDB endpoint (e.g. a local moto server); "
                     "AWS_ENDPOINT_URL_DYNAMODB is honoured too")

    run = p.add_argument_group("run")
    mode = run.add_mutually_exclusive_group()
    mode.add_argument("--dry-run", dest="dry_run", action="store_true", default=True,
                      help="show what would be copied, write nothing (default)")
    mode.add_argument("--no-dry-run", dest="dry_run", action="store_false",
                      help="actually copy")
    run.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    run.add_argument("--force", action="store_true",
                     help="allow a target table that is, or looks like, the dev table")
    run.add_argument("--skip-existing", dest="skip_existing", action="store_true", default=True,
                     help="skip images whose IMAGE item is already in prod (default)")
    run.add_argument("--no-skip-existing", dest="skip_existing", action="store_false",
                     help="re-sync images already in prod: write missing items, report conflicts")
    run.add_argument("--overwrite-changed", action="store_true",
                     help="overwrite prod items that differ from the export (default: keep prod's)")
    run.add_argument("--max-workers", type=int, default=10, help="parallel requests (default 10)")
    run.add_argument("--max-retries", type=int, default=8,
                     help="retries per request on throttling, 5xx, dropped connections and "
                          "UnprocessedItems (default 8)")
    run.add_argument("--max-items-per-second", type=float, metavar="R",
                     help="cap on items written per second, shared by all workers")

    ops = p.add_argument_group("after the copy")
    ops.add_argument("--trigger-embeddings", action="store_true",
                     help="start the line and word embedding Step Functions after a clean live copy")
    ops.add_argument("--line-state-machine", default=DEFAULT_LINE_MACHINE,
                     help=f"name or ARN (default {DEFAULT_LINE_MACHINE})")
    ops.add_argument("--word-state-machine", default=DEFAULT_WORD_MACHINE,
                     help=f"name or ARN (default {DEFAULT_WORD_MACHINE})")
    ops.add_argument("--status", action="store_true",
                     help="count receipt lines/words still waiting for embeddings (read-only)")
    ops.add_argument("--verify", action="store_true",
                     help="read every exported image back from prod and compare (read-only)")

    out = p.add_argument_group("output")
    out.add_argument("--report", type=Path, metavar="FILE", help="write a JSON report")
    out.add_argument("--dump-items", type=Path, metavar="FILE",
                     help="write every item written (or, in a dry run, to be written) as JSON Lines")
    out.add_argument("--no-progress", action="store_true", help="no progress bars")
    out.add_argument("--verbose", "-v", action="store_true", help="debug logging")
    out.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return p


@dataclasses.dataclass
class Config:
    export_dir: Path
    dry_run: bool = True
    table: Optional[str] = None
    dev_table: Optional[str] = None
    dev_raw_bucket: Optional[str] = None
    prod_raw_bucket: Optional[str] = None
    dev_cdn_bucket: Optional[str] = None
    prod_cdn_bucket: Optional[str] = None
    region: Optional[str] = None
    profile: Optional[str] = None
    endpoint_url: Optional[str] = None
    include_empty: bool = False
    ignore_unknown: bool = False
    skip_existing: bool = True
    overwrite_changed: bool = False
    max_workers: int = 10
    max_retries: int = 8
    max_items_per_second: Optional[float] = None
    limit: Optional[int] = None
    shard: Optional[tuple[int, int]] = None
    yes: bool = False
    force: bool = False
    trigger_embeddings: bool = False
    line_state_machine: str = DEFAULT_LINE_MACHINE
    word_state_machine: str = DEFAULT_WORD_MACHINE
    status: bool = False
    verify: bool = False
    report: Optional[Path] = None
    dump_items: Optional[Path] = None
    progress: bool = True
    verbose: bool = False

    @property
    def copies(self) -> bool:
        """--status and --verify are read-only operations of their own; anything else copies."""
        return not (self.status or self.verify)


def load_pulumi_outputs(path: Optional[Path]) -> dict[str, str]:
    """Read the JSON that `pulumi stack output --json` prints."""
    if path is None:
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read config file {path}: {exc}") from None
    if not isinstance(data, dict):
        raise UsageError(f"config file {path}: expected a JSON object of stack outputs")
    return {name: data[key] for name, key in PULUMI_KEYS.items() if isinstance(data.get(key), str)}


def parse_shard(text: Optional[str]) -> Optional[tuple[int, int]]:
    if text is None:
        return None
    m = re.fullmatch(r"(\d+)/(\d+)", text)
    if not m or not 0 <= int(m[1]) < int(m[2]):
        raise UsageError(f"--shard {text!r}: expected K/N with 0 <= K < N, e.g. 0/4")
    return int(m[1]), int(m[2])


def resolve_config(args: argparse.Namespace, environ: Mapping[str, str]) -> Config:
    """Merge flags, pulumi config files and environment variables (in that order of precedence)."""
    dev = load_pulumi_outputs(args.dev_config)
    prod = load_pulumi_outputs(args.prod_config)
    from_files = {
        "table": prod.get("table"),
        "dev_table": dev.get("table"),
        "dev_raw_bucket": dev.get("raw_bucket"),
        "prod_raw_bucket": prod.get("raw_bucket"),
        "dev_cdn_bucket": dev.get("cdn_bucket"),
        "prod_cdn_bucket": prod.get("cdn_bucket"),
    }
    named = {}
    for name, env in ENV_VARS.items():
        named[name] = getattr(args, name) or from_files.get(name) or environ.get(env) or None
    for flag in ("max_workers", "max_retries"):
        if getattr(args, flag) < (1 if flag == "max_workers" else 0):
            raise UsageError(f"--{flag.replace('_', '-')} must be at least "
                             f"{1 if flag == 'max_workers' else 0}")
    if args.limit is not None and args.limit < 0:
        raise UsageError("--limit must be >= 0")
    if args.max_items_per_second is not None and not args.max_items_per_second > 0:
        raise UsageError("--max-items-per-second must be > 0")
    cfg = Config(
        export_dir=args.export_dir,
        dry_run=args.dry_run,
        region=args.region,
        profile=args.profile,
        endpoint_url=args.endpoint_url or environ.get("AWS_ENDPOINT_URL_DYNAMODB") or None,
        include_empty=args.include_empty,
        ignore_unknown=args.ignore_unknown,
        skip_existing=args.skip_existing,
        overwrite_changed=args.overwrite_changed,
        max_workers=args.max_workers,
        max_retries=args.max_retries,
        max_items_per_second=args.max_items_per_second,
        limit=args.limit,
        shard=parse_shard(args.shard),
        yes=args.yes,
        force=args.force,
        trigger_embeddings=args.trigger_embeddings,
        line_state_machine=args.line_state_machine,
        word_state_machine=args.word_state_machine,
        status=args.status,
        verify=args.verify,
        report=args.report,
        dump_items=args.dump_items,
        progress=not args.no_progress,
        verbose=args.verbose,
        **named,
    )
    return cfg


def check_config(cfg: Config, export_dir_given: bool) -> list[str]:
    """Refuse configurations that cannot work or are unsafe; return warnings."""
    warnings = []
    needs_export = cfg.copies or cfg.verify or export_dir_given
    if needs_export and not cfg.export_dir.is_dir():
        raise UsageError(f"export directory not found: {cfg.export_dir}")
    pairs = [("raw", cfg.dev_raw_bucket, cfg.prod_raw_bucket),
             ("cdn", cfg.dev_cdn_bucket, cfg.prod_cdn_bucket)]
    for kind, dev, prod in pairs:
        if bool(dev) != bool(prod):
            raise UsageError(f"give both --dev-{kind}-bucket and --prod-{kind}-bucket, or neither")
        if not dev and (cfg.copies or cfg.verify):
            msg = (f"{kind} bucket names not configured: {kind} S3 bucket names would NOT be "
                   f"rewritten (give --dev-{kind}-bucket/--prod-{kind}-bucket or --dev-config/--prod-config)")
            if cfg.copies and not cfg.dry_run:
                raise UsageError(msg)
            warnings.append(msg)
    needs_table = (cfg.copies and not cfg.dry_run) or cfg.status or cfg.verify or cfg.trigger_embeddings
    if needs_table and not cfg.table and not (cfg.trigger_embeddings and not cfg.copies
                                              and not cfg.status and not cfg.verify):
        raise UsageError("no prod table: give --table, --prod-config or "
                         f"{ENV_VARS['table']} (a live run, --status and --verify need one)")
    if cfg.copies and not cfg.dry_run and cfg.table:
        if cfg.dev_table and cfg.table == cfg.dev_table and not cfg.force:
            raise UsageError(f"refusing to copy into {cfg.table!r}: it is the configured dev table "
                             "(--force overrides)")
        if looks_like_dev_table(cfg.table) and not cfg.force:
            raise UsageError(f"refusing to copy into {cfg.table!r}: the name looks like a dev table "
                             "(--force overrides)")
    return warnings


def looks_like_dev_table(name: str) -> bool:
    """True for names with a 'dev' or 'development' token, e.g. ReceiptsTable-dev-1a2b."""
    return re.search(r"(?i)(^|[^a-z0-9])(dev|development)([^a-z0-9]|$)", name) is not None or \
        re.search(r"(?:^|[a-z0-9])Dev(?:[A-Z0-9]|$)", name) is not None


# =============================================================================
# 2. Reading exports
# =============================================================================

class InputError(Exception):
    """Bad data in one export file: fails that image alone."""

    def __init__(self, message: str, entity: Optional[str] = None,
                 index: Optional[int] = None, field: Optional[str] = None) -> None:
        super().__init__(message)
        self.message, self.entity, self.index, self.field = message, entity, index, field

    def where(self) -> str:
        parts = []
        if self.entity is not None:
            parts.append(self.entity if self.index is None else f"{self.entity}[{self.index}]")
        if self.field is not None:
            parts.append(f"field {self.field!r}")
        return " ".join(parts)


# Export lists that hold kinds prod must never receive from a migration (ITEMS.md §7),
# and lists of entities that no longer exist (exports from before 2025-07-03).
NEVER_COPY_LISTS = {
    "compaction_runs": "COMPACTION_RUN",
    "compaction_locks": "COMPACTION_LOCK",
    "embedding_batch_results": "EMBEDDING_BATCH_RESULT",
    "jobs": "JOB",
    "job_metrics": "JOB_METRIC",
}
OBSOLETE_LISTS = {"word_tags": "WORD_TAG", "receipt_word_tags": "RECEIPT_WORD_TAG"}
NEVER_COPY_TYPES = set(NEVER_COPY_LISTS.values())
# Key shapes of the never-copy kinds, for entries that carry keys but no TYPE.
NEVER_COPY_KEY_SHAPES = (
    ("COMPACTION_RUN", re.compile(r"RECEIPT#\d+#COMPACTION_RUN#"), "SK"),
    ("COMPACTION_LOCK", re.compile(r"LOCK#"), "PK"),
    ("EMBEDDING_BATCH_RESULT", re.compile(r"BATCH#"), "PK"),
    ("JOB_METRIC", re.compile(r"METRIC#"), "SK"),
    ("JOB", re.compile(r"JOB#"), "PK"),
)


def list_export_files(export_dir: Path) -> list[Path]:
    """Every *.json file of the export, in file-name order."""
    return sorted((p for p in export_dir.iterdir() if p.suffix == ".json" and p.is_file()),
                  key=lambda p: p.name)


def reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not a valid JSON number")


def read_export_file(path: Path) -> dict[str, Any]:
    """Parse one export file into its top-level object (one image)."""
    raw = path.read_bytes()
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
    except ValueError as exc:  # NaN / Infinity
        raise InputError(f"invalid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise InputError(f"top level must be a JSON object of entity lists, not {json_type(data)}")
    return data


def json_type(value: Any) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean",
             int: "integer", float: "number", type(None): "null"}
    return names.get(type(value), type(value).__name__)


# =============================================================================
# 3. Entity schema
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


def finite_number(v: Any) -> float | int:
    """Ints and floats only: bool, strings and NaN/Infinity are rejected."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise FieldError(f"expected a number, got {json_type(v)}")
    if isinstance(v, float) and not math.isfinite(v):
        raise FieldError(f"number must be finite, got {v}")
    return v


def fixed_text(v: Any, places: int) -> str:
    """Fk(v): the float's repr, rounded half-up to k decimals, fixed-point."""
    d = Decimal(repr(float(finite_number(v))))
    try:
        q = d.quantize(Decimal(1).scaleb(-places), context=NUMBER_CONTEXT)
    except InvalidOperation:
        raise FieldError(f"{v!r} is too large for {places} decimals") from None
    return format(q, "f")


def repr_text(v: Any) -> str:
    """R(v): Python's float repr; ints become floats first (0 -> '0.0')."""
    return repr(float(finite_number(v)))


def int_value(v: Any, minimum: Optional[int] = None) -> int:
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


UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[45][0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$", re.I)


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


def n_int(minimum: Optional[int] = None, nullable: bool = False) -> Codec:
    def codec(v: Any) -> AttributeValue:
        if v is None and nullable:
            return NULL
        return {"N": str(int_value(v, minimum))}
    return codec


def key_int(minimum: int) -> Codec:
    def codec(v: Any) -> object:
        int_value(v, minimum)
        return KEY_ONLY
    return codec


def key_uuid(v: Any) -> object:
    if not isinstance(v, str) or not UUID_RE.match(v):
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


def number_map(keys: tuple[str, ...], places: Optional[int]) -> Codec:
    """A map with exactly these numeric keys: Fk text, or R() when places is None."""
    def codec(v: Any) -> AttributeValue:
        if not isinstance(v, dict):
            raise FieldError(f"expected an object with keys {', '.join(keys)}, got {json_type(v)}")
        if set(v) != set(keys):
            raise FieldError(f"keys must be exactly {', '.join(keys)}, got {', '.join(sorted(v))}")
        enc = repr_text if places is None else (lambda x: fixed_text(x, places))
        return {"M": {k: {"N": enc(v[k])} for k in keys}}
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


def generic_value(v: Any) -> AttributeValue:
    """Native JSON -> DynamoDB, keeping the int/float distinction of the JSON text."""
    if v is None:
        return NULL
    if isinstance(v, bool):
        return {"BOOL": v}
    if isinstance(v, int):
        return {"N": str(v)}
    if isinstance(v, float):
        return {"N": repr_text(v)}
    if isinstance(v, str):
        return {"S": v}
    if isinstance(v, list):
        return {"L": [generic_value(x) for x in v]}
    if isinstance(v, dict):
        return {"M": {str(k): generic_value(x) for k, x in v.items()}}
    raise FieldError(f"unsupported value {v!r}")


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
    return {"M": {k: {"S": str(x)} for k, x in v.items()}}


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


@dataclasses.dataclass(frozen=True)
class FieldSpec:
    name: str
    codec: Codec
    default: Any = REQUIRED   # the class default, used when an older export lacks the field
    none_as: Any = None       # what an explicit null means, where receipt_dynamo maps it


@dataclasses.dataclass(frozen=True)
class KindSpec:
    export_key: str
    type: str
    fields: tuple[FieldSpec, ...]
    sk: str
    # (index, PK template, SK template, field that must be truthy or None)
    indexes: tuple[tuple[str, str, str, Optional[str]], ...] = ()
    # extra template values and cross-field checks: entity -> {name: value}
    derive: Optional[Callable[[dict[str, Any]], dict[str, Any]]] = None

    @property
    def field_names(self) -> frozenset[str]:
        return frozenset(f.name for f in self.fields)


def fields(*groups: Iterable[FieldSpec]) -> tuple[FieldSpec, ...]:
    return tuple(f for group in groups for f in group)


def geometry(text: Codec = None) -> list[FieldSpec]:  # type: ignore[assignment]
    """Block G: text, bounding box and corners (F20), angles (F18), confidence (F2)."""
    return [
        FieldSpec("text", text or s_any),
        FieldSpec("bounding_box", number_map(BOX_KEYS, 20)),
        *(FieldSpec(c, number_map(POINT_KEYS, 20)) for c in CORNERS),
        FieldSpec("angle_degrees", n_fixed(18)),
        FieldSpec("angle_radians", n_fixed(18)),
        FieldSpec("confidence", confidence_f2),
    ]


CORNERS = ("top_left", "top_right", "bottom_left", "bottom_right")
CDN_KEYS = ("cdn_s3_key", "cdn_webp_s3_key", "cdn_avif_s3_key") + tuple(
    f"cdn_{size}{fmt}_s3_key" for size in ("thumbnail", "small", "medium")
    for fmt in ("", "_webp", "_avif"))


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
    if e["validated_by"] not in ("",) + VALIDATION_METHOD:
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
               [FieldSpec(c, number_map(POINT_KEYS, 18)) for c in CORNERS]),
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
        indexes=(("GSI1", "EMBEDDING_STATUS#{embedding_status}", "LINE#" + RCPT + "#LINE#{line_id:05d}", None),
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


# =============================================================================
# 4. Transformation rules
# =============================================================================

@dataclasses.dataclass(frozen=True)
class Rules:
    """The migration rules of ITEMS.md §5: {dev bucket: prod bucket} per bucket kind."""
    raw_buckets: Mapping[str, str]
    cdn_buckets: Mapping[str, str]

    @classmethod
    def from_config(cls, cfg: Config) -> "Rules":
        def pair(dev: Optional[str], prod: Optional[str]) -> dict[str, str]:
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
    unknown = sorted(set(raw) - kind.field_names)
    if unknown:
        raise InputError(f"unknown field (not in {kind.type}; it would be lost in prod)",
                         field=unknown[0])
    entity = {}
    for f in kind.fields:
        if f.name in raw:
            value = raw[f.name]
            entity[f.name] = f.none_as if value is None and f.none_as is not None else value
        elif f.default is REQUIRED:
            raise InputError("required field is missing", field=f.name)
        else:
            entity[f.name] = list(f.default) if isinstance(f.default, list) else f.default
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
    values = dict(entity)
    if kind.derive:
        values.update(kind.derive(entity))
    item: dict[str, AttributeValue] = {
        "PK": {"S": IMG.format_map(values)},
        "SK": {"S": kind.sk.format_map(values)},
    }
    for index, pk, sk, when in kind.indexes:
        if when is None or values[when]:
            item[f"{index}PK"] = {"S": pk.format_map(values)}
            item[f"{index}SK"] = {"S": sk.format_map(values)}
    item["TYPE"] = {"S": kind.type}
    item.update(attributes)
    check_item_limits(item)
    return item


def check_item_limits(item: dict[str, AttributeValue]) -> None:
    """What DynamoDB would reject: empty or oversized key strings, items over 400 KB."""
    for name, value in item.items():
        if name in KEY_ATTRIBUTES:
            text = value["S"]
            limit = MAX_SORT_KEY_BYTES if name.endswith("SK") else MAX_PARTITION_KEY_BYTES
            if text == "":
                raise InputError(f"key attribute {name} would be an empty string", field=name)
            if len(text.encode("utf-8")) > limit:
                raise InputError(f"key attribute {name} is longer than {limit} bytes", field=name)
    size = item_size(item)
    if size > MAX_ITEM_BYTES:
        raise InputError(f"item is {size:,} bytes, over DynamoDB's 400 KB limit "
                         f"({item['SK']['S'][:60]})")


KEY_ATTRIBUTES = frozenset(["PK", "SK"] + [f"GSI{n}{k}" for n in range(1, 5) for k in ("PK", "SK")])


def item_size(item: Mapping[str, AttributeValue]) -> int:
    """Item size as DynamoDB counts it: UTF-8 names and values, numbers ~1 byte per 2 digits."""
    return sum(len(name.encode("utf-8")) + value_size(v) for name, v in item.items())


def value_size(v: AttributeValue) -> int:
    (tag, x), = v.items()
    if tag == "S":
        return len(x.encode("utf-8"))
    if tag == "N":
        return (len(x.strip("-").replace(".", "").lstrip("0")) + 1) // 2 + 1
    if tag in ("BOOL", "NULL"):
        return 1
    if tag == "M":
        return 3 + sum(len(k.encode("utf-8")) + 1 + value_size(y) for k, y in x.items())
    if tag == "L":
        return 3 + sum(1 + value_size(y) for y in x)
    if tag == "SS":
        return sum(len(s.encode("utf-8")) for s in x)
    return len(x)  # B


@dataclasses.dataclass
class ImagePlan:
    """Everything one export file turns into; the IMAGE item comes last."""
    path: Path
    image_id: str
    items: list[dict[str, AttributeValue]]
    entities: Counter[str]
    excluded: Counter[str]
    ignored: Counter[str]
    has_receipts: bool


def never_copy_type(entry: Mapping[str, Any]) -> Optional[str]:
    """The never-copy kind an entry is, judged by its TYPE or its key shape."""
    t = entry.get("TYPE")
    if isinstance(t, str) and t in NEVER_COPY_TYPES:
        return t
    for name, pattern, key in NEVER_COPY_KEY_SHAPES:
        value = entry.get(key)
        if isinstance(value, str) and pattern.match(value):
            return name
    return None


def plan_image(path: Path, data: dict[str, Any], rules: Rules, ignore_unknown: bool) -> ImagePlan:
    """Turn one parsed export file into the items to write. Raises InputError."""
    for key, entries in data.items():
        if not isinstance(entries, list):
            raise InputError(f"expected a list of entities, got {json_type(entries)}", entity=key)
    images = data.get("images", [])
    if len(images) != 1 or not isinstance(images[0], dict):
        raise InputError(f"an export file holds exactly one image, found {len(images)}",
                         entity="images")
    image_id = images[0].get("image_id")
    if not isinstance(image_id, str) or not UUID_RE.match(image_id):
        raise InputError(f"not a version 4/5 UUID: {image_id!r}", entity="images", index=0,
                         field="image_id")
    if path.stem != image_id:
        raise InputError(f"file name does not match image_id {image_id!r}", entity="images",
                         index=0, field="image_id")
    plan = ImagePlan(path, image_id, [], Counter(), Counter(), Counter(),
                     bool(data.get("receipts")))
    seen: dict[tuple[str, str], tuple[str, int]] = {}
    image_item = None
    for key, entries in data.items():
        kind = KINDS_BY_KEY.get(key)
        if kind is None:
            if key in NEVER_COPY_LISTS or key in OBSOLETE_LISTS:
                plan.excluded[key] += len(entries)
            elif ignore_unknown:
                plan.ignored[key] += len(entries)
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
                plan.excluded[never_copy_type(raw) or key] += 1
                continue
            pk_sk = (item["PK"]["S"], item["SK"]["S"])
            if pk_sk in seen:
                other = seen[pk_sk]
                raise InputError(f"duplicate item: same key as {other[0]}[{other[1]}] "
                                 f"(SK {pk_sk[1]})", entity=key, index=index)
            seen[pk_sk] = (key, index)
            plan.entities[key] += 1
            if kind.type == "IMAGE":
                image_item = item
            else:
                plan.items.append(item)
    assert image_item is not None
    plan.items.append(image_item)
    return plan


def plan_entity(kind: KindSpec, raw: Any, image_id: str,
                rules: Rules) -> Optional[dict[str, AttributeValue]]:
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
