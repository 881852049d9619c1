"""Helpers to build export directories from the golden fixtures, and to run the CLI.

Everything here reads ``tests/fixtures/golden`` (a copy of the shared golden set);
nothing reads ``../shared``. Typical use::

    from exports import copy_golden, mutate, load_expected

    paths = copy_golden(tmp_path, ids=[IMG_A, IMG_B])
    mutate(paths[0], lambda d: d["lines"][0].update(line_id=0))
    expected = load_expected([IMG_B])          # {(PK, SK): item}
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

TESTS_DIR = Path(__file__).resolve().parent
REPO_ROOT = TESTS_DIR.parent
TOOL = REPO_ROOT / "copy_dynamodb_dev_to_prod.py"
GOLDEN_DIR = TESTS_DIR / "fixtures" / "golden"
GOLDEN_EXPORT = GOLDEN_DIR / "export"
GOLDEN_EXPECTED = GOLDEN_DIR / "expected"
DEV_EXPORT = REPO_ROOT / "dev.export"

# The golden images (see tests/fixtures/golden/README.md).
IMG_PLACE_EMPTY_ID = "cd613e30-d8f1-4adf-91b7-584a2265b1f5"  # place_id "", 2 receipts
IMG_VERBATIM = "6e9d7077-dca1-484f-82f0-1b582c61cbec"  # Z timestamps, 35-char label
IMG_ROUNDING = "39a01c4f-2da5-4a07-96ae-4caebfc24715"  # 0.985 / 0.125 confidences, 3 receipts
IMG_META_AND_PLACE = "b35feee1-1cd5-4fb2-8a41-a5236695a69c"  # receipt_metadatas + receipt_places
IMG_LEGACY = "efa03cb2-a232-4c58-979f-d56028dab399"  # 2025 key set (metadatas, no places/barcodes)
GOLDEN_IDS: tuple[str, ...] = tuple(sorted(p.stem for p in GOLDEN_EXPORT.glob("*.json")))

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

# Export list name -> item TYPE, for the 14 kinds.
TYPE_OF_LIST = {
    "images": "IMAGE",
    "lines": "LINE",
    "words": "WORD",
    "letters": "LETTER",
    "receipts": "RECEIPT",
    "receipt_lines": "RECEIPT_LINE",
    "receipt_words": "RECEIPT_WORD",
    "receipt_letters": "RECEIPT_LETTER",
    "receipt_word_labels": "RECEIPT_WORD_LABEL",
    "receipt_places": "RECEIPT_PLACE",
    "receipt_metadatas": "RECEIPT_METADATA",
    "receipt_barcodes": "RECEIPT_BARCODE",
    "ocr_jobs": "OCR_JOB",
    "ocr_routing_decisions": "OCR_ROUTING_DECISION",
}
LIST_OF_TYPE = {t: k for k, t in TYPE_OF_LIST.items()}

Item = dict[str, Any]
Key = tuple[str, str]


# --------------------------------------------------------------------------- reading golden data


def golden_export_path(image_id: str) -> Path:
    return GOLDEN_EXPORT / f"{image_id}.json"


@cache
def _golden_text(image_id: str) -> str:
    return golden_export_path(image_id).read_text(encoding="utf-8")


def load_export(image_id: str) -> dict[str, Any]:
    """A fresh (mutable) copy of one golden export file's object."""
    return json.loads(_golden_text(image_id))


@cache
def _expected_lines(image_id: str) -> tuple[str, ...]:
    path = GOLDEN_EXPECTED / f"{image_id}.jsonl"
    return tuple(line for line in path.read_text(encoding="utf-8").splitlines() if line.strip())


def item_key(item: Mapping[str, Any]) -> Key:
    return item["PK"]["S"], item["SK"]["S"]


def by_key(items: Iterable[Item]) -> dict[Key, Item]:
    """Index items by (PK, SK); a duplicate key is an error."""
    out: dict[Key, Item] = {}
    for item in items:
        key = item_key(item)
        assert key not in out, f"duplicate key {key}"
        out[key] = item
    return out


def load_expected(ids: Iterable[str] | None = None) -> dict[Key, Item]:
    """The golden expected items of ``ids`` (default: all), keyed by (PK, SK)."""
    out: dict[Key, Item] = {}
    for image_id in GOLDEN_IDS if ids is None else ids:
        for key, item in by_key(json.loads(line) for line in _expected_lines(image_id)).items():
            assert key not in out, key
            out[key] = item
    return out


def expected_for_clone(image_id: str, new_id: str) -> dict[Key, Item]:
    """Expected items of a golden image cloned under ``new_id`` (see :func:`clone_export`)."""
    text = "\n".join(_expected_lines(image_id)).replace(image_id, new_id)
    return by_key(json.loads(line) for line in text.splitlines())


def read_jsonl(path: Path) -> list[Item]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


# --------------------------------------------------------------------------- building export dirs


def fake_uuid(n: int, prefix: str = "0000") -> str:
    """A deterministic version-4 UUID (``prefix`` gives families of ids)."""
    return str(uuid.UUID(f"{prefix:0>8}-0000-4000-8000-{n:012d}"))


def write_export(dst: Path, data: Any, name: str | None = None, *, indent: int | None = 4) -> Path:
    """Write ``data`` as an export file like export_image does (``json.dump(indent=4)``,
    ASCII-escaped). The file name defaults to ``<images[0].image_id>.json``."""
    dst.mkdir(parents=True, exist_ok=True)
    if name is None:
        name = f"{data['images'][0]['image_id']}.json"
    path = dst / name
    path.write_text(json.dumps(data, indent=indent), encoding="utf-8")
    return path


def copy_golden(dst: Path, ids: Iterable[str] | None = None) -> list[Path]:
    """Copy golden export files (default: all) into ``dst`` byte for byte."""
    dst.mkdir(parents=True, exist_ok=True)
    out = []
    for image_id in GOLDEN_IDS if ids is None else ids:
        path = dst / f"{image_id}.json"
        path.write_bytes(golden_export_path(image_id).read_bytes())
        out.append(path)
    return out


def mutate(path: Path, fn: Callable[[Any], Any]) -> Path:
    """Load ``path``, apply ``fn`` (mutate in place, or return a replacement), write back."""
    data = json.loads(path.read_text(encoding="utf-8"))
    result = fn(data)
    path.write_text(json.dumps(data if result is None else result, indent=4), encoding="utf-8")
    return path


def clone_export(image_id: str, new_id: str) -> dict[str, Any]:
    """A golden image under another image_id (every occurrence of the id is replaced)."""
    return json.loads(_golden_text(image_id).replace(image_id, new_id))


def build_clones(dst: Path, image_id: str, count: int, prefix: str = "c10e") -> dict[Key, Item]:
    """Write ``count`` clones of a golden image into ``dst``; returns their expected items."""
    expected: dict[Key, Item] = {}
    for n in range(count):
        new_id = fake_uuid(n, prefix)
        write_export(dst, clone_export(image_id, new_id))
        expected.update(expected_for_clone(image_id, new_id))
    return expected


def drop_fields(entries: Iterable[dict[str, Any]], *names: str) -> None:
    for entry in entries:
        for name in names:
            entry.pop(name, None)


def deep(data: Any) -> Any:
    return copy.deepcopy(data)


# --------------------------------------------------------------------------- expected-item helpers


def expected_without_types(expected: Mapping[Key, Item], *types: str) -> dict[Key, Item]:
    return {k: v for k, v in expected.items() if v["TYPE"]["S"] not in types}


def count_types(items: Iterable[Item]) -> dict[str, int]:
    out: dict[str, int] = {}
    for item in items:
        out[item["TYPE"]["S"]] = out.get(item["TYPE"]["S"], 0) + 1
    return out


def entity_counts(items: Iterable[Item]) -> dict[str, int]:
    """Expected per-export-list counts (as the tool reports them) of these items."""
    return {LIST_OF_TYPE[t]: n for t, n in count_types(items).items()}


def diff_items(actual: Mapping[Key, Item], expected: Mapping[Key, Item]) -> list[str]:
    """Readable differences between two keyed item sets (empty when exactly equal)."""
    problems = [f"missing {k}" for k in sorted(set(expected) - set(actual))]
    problems += [f"unexpected {k}" for k in sorted(set(actual) - set(expected))]
    for key in sorted(set(actual) & set(expected)):
        a, e = actual[key], expected[key]
        if a != e:
            names = sorted(n for n in set(a) | set(e) if a.get(n) != e.get(n))
            problems.append(f"{key}: " + "; ".join(f"{n}: got {a.get(n)!r} want {e.get(n)!r}" for n in names))
    return problems


def assert_items_equal(actual: Mapping[Key, Item], expected: Mapping[Key, Item]) -> None:
    problems = diff_items(actual, expected)
    assert not problems, f"{len(problems)} difference(s):\n" + "\n".join(problems[:20])


# --------------------------------------------------------------------------- running the CLI


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def clean_env(home: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """os.environ without any AWS_*/BOTO* variable, HOME pointed at ``home`` (empty dir),
    plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith(("AWS_", "BOTO"))}
    for name in (
        "PROD_DYNAMODB_TABLE_NAME",
        "DEV_DYNAMODB_TABLE_NAME",
        "DEV_RAW_BUCKET",
        "PROD_RAW_BUCKET",
        "DEV_CDN_BUCKET",
        "PROD_CDN_BUCKET",
    ):
        env.pop(name, None)
    home.mkdir(parents=True, exist_ok=True)
    env.update({"HOME": str(home), "PYTHONUNBUFFERED": "1", "PYTHONIOENCODING": "utf-8"})
    env.update(extra or {})
    return env


def run_tool(
    args: Sequence[Any], env: Mapping[str, str], *, cwd: Path | None = None, timeout: float = 120
) -> Result:
    """Run the tool as a subprocess (stdin closed, so it is never a terminal)."""
    proc = subprocess.run(
        [sys.executable, str(TOOL), *map(str, args)],
        env=dict(env),
        cwd=str(cwd or REPO_ROOT),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        encoding="utf-8",
        errors="replace",
        timeout=timeout,
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)


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
    """The ``Entity counts:`` section as {list name: printed count}."""
    lines = stdout.splitlines()
    assert "Entity counts:" in lines, stdout
    out = {}
    for line in lines[lines.index("Entity counts:") + 1 :]:
        if not line.startswith("  "):
            break
        name, _, value = line.strip().partition(": ")
        out[name] = value
    return out
