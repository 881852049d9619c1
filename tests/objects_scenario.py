"""An export whose items point to S3 objects, and those objects in dev buckets on moto
(the harness of ``test_objects.py``, for ``--copy-objects``).

:func:`make_scenario` writes an export (the golden one by default, or several copies of it)
whose dev bucket names are unique to the scenario, so the tests of one moto server never see
each other's objects; it computes, from the export JSON alone (not with the tool's code),
which objects the items reference, and the expected items with the prod bucket names.
:meth:`Scenario.seed` creates the dev buckets (and empty prod ones) and one object per
referenced key, each with its own body, a content type, cache headers and metadata.
"""

from __future__ import annotations

import itertools
import json
import os
import uuid
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from items import GOLDEN_EXPORT, GOLDEN_IDS, Item, Key, by_key, expected_for_clone
from servers import make_service_client

CDN_KEY_FIELDS = tuple(f"cdn{size}{fmt}_s3_key" for size in ("", "_thumbnail", "_small", "_medium")
                       for fmt in ("", "_webp", "_avif"))
GOLDEN_BUCKETS = {"dev-raw-bucket": "prod-raw-bucket", "dev-cdn-bucket": "prod-cdn-bucket"}

_numbers = itertools.count(1)

#: Keys in the dev buckets that no item references.
DECOY_KEYS = ("raw/not-referenced.png", "assets/not-referenced/1_thumbnail.webp",
              f"assets/{GOLDEN_IDS[0]}_RECEIPT_00099_thumbnail.webp")

#: An object: (bucket, key).
Obj = tuple[str, str]


def unique_suffix() -> str:
    return f"{os.getpid()}-{next(_numbers)}-{uuid.uuid4().hex[:6]}"


def each(fn: Callable[[Obj], Any], objs: Iterable[Obj]) -> list[Any]:
    """``fn`` of every object, a few at a time (S3 reads of hundreds of objects)."""
    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(fn, objs))


def referenced_in(data: dict[str, Any], raw_bucket: str, cdn_bucket: str) -> set[Obj]:
    """The (dev bucket, key) pairs an export image's images[] and receipts[] point to: the raw
    upload and the 12 CDN keys, non-empty keys only, only where the bucket is the dev one."""
    out: set[Obj] = set()
    for entity in [*data.get("images", []), *data.get("receipts", [])]:
        if entity.get("raw_s3_bucket") == raw_bucket and entity.get("raw_s3_key"):
            out.add((raw_bucket, entity["raw_s3_key"]))
        if entity.get("cdn_s3_bucket") == cdn_bucket:
            out |= {(cdn_bucket, entity[f]) for f in CDN_KEY_FIELDS if entity.get(f)}
    return out


@dataclass
class Scenario:
    url: str
    export: Path
    dev_raw: str
    dev_cdn: str
    prod_raw: str
    prod_cdn: str
    expected: dict[Key, Item]
    #: image id -> the objects its items reference (dev bucket, key)
    refs: dict[str, set[Obj]]
    bodies: dict[Obj, bytes] = field(default_factory=dict)
    s3: Any = None

    # ------------------------------------------------------------------ names

    @property
    def prod_of(self) -> dict[str, str]:
        return {self.dev_raw: self.prod_raw, self.dev_cdn: self.prod_cdn}

    @property
    def bucket_flags(self) -> list[str]:
        return ["--dev-raw-bucket", self.dev_raw, "--prod-raw-bucket", self.prod_raw,
                "--dev-cdn-bucket", self.dev_cdn, "--prod-cdn-bucket", self.prod_cdn]

    @property
    def all_refs(self) -> set[Obj]:
        return set().union(*self.refs.values())

    def prod_obj(self, obj: Obj) -> Obj:
        return self.prod_of[obj[0]], obj[1]

    def expected_prod(self, refs: Iterable[Obj] | None = None) -> set[Obj]:
        """The prod objects a complete copy leaves (of ``refs``, default all)."""
        return {self.prod_obj(o) for o in (self.all_refs if refs is None else refs)}

    # ------------------------------------------------------------------ S3

    def seed(self, *, skip: Iterable[Obj] = ()) -> None:
        """Create the four buckets and every referenced object in the dev buckets (except
        ``skip``), each with a distinct body and its own headers."""
        for bucket in (self.dev_raw, self.dev_cdn, self.prod_raw, self.prod_cdn):
            self.s3.create_bucket(Bucket=bucket)
        for bucket in (self.prod_raw, self.prod_cdn):  # see writes()
            self.s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
        skipped = set(skip)
        for n, obj in enumerate(sorted(self.all_refs)):
            body = f"{obj[0]}/{obj[1]}#{n}\n".encode() * (1 + n % 7) + os.urandom(16 + n)
            self.bodies[obj] = body
            if obj in skipped:
                continue
            self.put(obj, body, n)
        for bucket in (self.dev_raw, self.dev_cdn):  # objects no item points to: never copied
            for key in DECOY_KEYS:
                self.s3.put_object(Bucket=bucket, Key=key, Body=f"decoy {bucket}/{key}".encode())

    def put(self, obj: Obj, body: bytes, n: int = 0) -> None:
        self.s3.put_object(Bucket=obj[0], Key=obj[1], Body=body, **self.headers(obj, n))

    @staticmethod
    def headers(obj: Obj, n: int = 0) -> dict[str, Any]:
        content_type = "image/avif" if obj[1].endswith(".avif") else (
            "image/webp" if obj[1].endswith(".webp") else f"image/png; n={n}")
        return {"ContentType": content_type, "CacheControl": f"public, max-age={1000 + n}",
                "Metadata": {"origin": obj[0], "variant": str(n)}}

    def listing(self, bucket: str) -> set[str]:
        keys: set[str] = set()
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            keys |= {o["Key"] for o in page.get("Contents", [])}
        return keys

    def prod_objects(self) -> set[Obj]:
        return {(b, k) for b in (self.prod_raw, self.prod_cdn) for k in self.listing(b)}

    def body(self, obj: Obj) -> bytes:
        return bytes(self.s3.get_object(Bucket=obj[0], Key=obj[1])["Body"].read())

    def head(self, obj: Obj) -> dict[str, Any]:
        return dict(self.s3.head_object(Bucket=obj[0], Key=obj[1]))

    def writes(self) -> dict[Obj, int]:
        """How many times each prod object was written: the prod buckets keep versions, so
        every copy (or other write) of a key is one more version of it."""
        out: dict[Obj, int] = {}
        for bucket in (self.prod_raw, self.prod_cdn):
            for page in self.s3.get_paginator("list_object_versions").paginate(Bucket=bucket):
                for version in page.get("Versions", []):
                    out[bucket, version["Key"]] = out.get((bucket, version["Key"]), 0) + 1
        return out

    def written_once(self, refs: Iterable[Obj] | None = None) -> dict[Obj, int]:
        """What :meth:`writes` is when every object of ``refs`` was copied exactly once."""
        return dict.fromkeys(self.expected_prod(refs), 1)

    def assert_prod_exact(self, refs: Iterable[Obj] | None = None, *, headers: bool = True,
                          also: Iterable[Obj] = ()) -> None:
        """The prod buckets hold exactly the prod twins of ``refs`` (default: every referenced
        object; ``also``: and of these, not compared), each byte for byte the dev object, with
        its content type, cache headers and metadata (``headers``), size and ETag."""
        refs = self.all_refs if refs is None else set(refs)
        actual, wanted = self.prod_objects(), self.expected_prod({*refs, *also})
        assert actual == wanted, (f"extra in prod: {sorted(actual - wanted)[:10]}; "
                                  f"missing in prod: {sorted(wanted - actual)[:10]}")
        names = ("ContentType", "CacheControl", "Metadata") if headers else ()

        def check(obj: Obj) -> None:
            twin = self.prod_obj(obj)
            assert self.body(twin) == self.bodies[obj] == self.body(obj), twin
            src, dst = self.head(obj), self.head(twin)
            for name in ("ContentLength", "ETag", *names):
                assert dst.get(name) == src.get(name), (twin, name, dst.get(name), src.get(name))

        each(check, sorted(refs))


def _rename(text: str, names: dict[str, str]) -> str:
    for old, new in names.items():
        text = text.replace(f'"{old}"', f'"{new}"')
    return text


def make_scenario(url: str, tmp_path: Path, *, ids: Sequence[str] = GOLDEN_IDS,
                  copies: int = 1) -> Scenario:
    """The golden images ``ids`` (``copies`` times: the first under the golden ids, the others
    under fresh ids) in ``tmp_path/export`` with dev and prod bucket names unique to this
    scenario."""
    suffix = unique_suffix()
    dev_raw, dev_cdn = f"dev-raw-{suffix}", f"dev-cdn-{suffix}"
    prod_raw, prod_cdn = f"prod-raw-{suffix}", f"prod-cdn-{suffix}"
    to_dev = {"dev-raw-bucket": dev_raw, "dev-cdn-bucket": dev_cdn}
    to_prod = {"prod-raw-bucket": prod_raw, "prod-cdn-bucket": prod_cdn}
    export = tmp_path / "export"
    export.mkdir(parents=True)
    expected: dict[Key, Item] = {}
    refs: dict[str, set[Obj]] = {}
    for n in range(copies):
        for image_id in ids:
            new_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"objects-{n}-{image_id}")) if n else image_id
            text = (GOLDEN_EXPORT / f"{image_id}.json").read_text(encoding="utf-8")
            text = _rename(text.replace(image_id, new_id), to_dev)
            (export / f"{new_id}.json").write_text(text, encoding="utf-8")
            refs[new_id] = referenced_in(json.loads(text), dev_raw, dev_cdn)
            items = expected_for_clone(image_id, new_id)
            expected.update(by_key(json.loads(_rename(json.dumps(i), to_prod)) for i in items.values()))
    scenario = Scenario(url, export, dev_raw, dev_cdn, prod_raw, prod_cdn, expected, refs)
    scenario.s3 = make_service_client(url, "s3")
    return scenario
