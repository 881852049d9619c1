"""Building export directories for tests from the golden export files.

Everything here reads ``tests/fixtures/golden/export`` (a copy of the shared golden set) and
writes files shaped like ``export_image``'s output; the items they must become are in
``items.py`` (``load_expected``, ``expected_for_clone``). Typical use::

    from exports import copy_golden, mutate
    from items import IMG_A, load_expected

    paths = copy_golden(tmp_path, ids=[IMG_A, IMG_B])
    mutate(paths[0], lambda d: d["lines"][0].update(line_id=0))
    expected = load_expected([IMG_B])          # {(PK, SK): item}
"""

from __future__ import annotations

import copy
import json
import uuid
from collections.abc import Callable, Iterable
from functools import cache
from pathlib import Path
from typing import Any

from items import GOLDEN_EXPORT, GOLDEN_IDS, Item, Key, expected_for_clone


def golden_export_path(image_id: str) -> Path:
    return GOLDEN_EXPORT / f"{image_id}.json"


@cache
def _golden_text(image_id: str) -> str:
    return golden_export_path(image_id).read_text(encoding="utf-8")


def load_export(image_id: str) -> dict[str, Any]:
    """A fresh (mutable) copy of one golden export file's object."""
    return json.loads(_golden_text(image_id))


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


def multiplied_export(dst: Path, copies: int) -> dict[Key, Item]:
    """The whole golden export ``copies`` times into ``dst`` (the first copy under the golden
    ids, the others under fresh deterministic ids), so runs make more requests. Returns the
    expected items."""
    expected: dict[Key, Item] = {}
    for n in range(copies):
        for image_id in GOLDEN_IDS:
            new_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"copy-{n}-{image_id}")) if n else image_id
            write_export(dst, clone_export(image_id, new_id))
            expected.update(expected_for_clone(image_id, new_id))
    return expected


def drop_fields(entries: Iterable[dict[str, Any]], *names: str) -> None:
    for entry in entries:
        for name in names:
            entry.pop(name, None)


def deep(data: Any) -> Any:
    return copy.deepcopy(data)
