"""Which images a run takes and how fast it writes them: --limit (slices until everything is
there), --shard K/N (the CRC-32 of the lower-cased image id, stable across processes, exactly
one shard per image whatever the id's case) and --max-items-per-second (the rate cap holds),
each run as the CLI on DynamoDB Local or as a dry run without a table."""

from __future__ import annotations

import time
import uuid
import zlib
from pathlib import Path
from typing import Any

import pytest
from cli import BUCKET_FLAGS, live_args, run_cli
from conftest import TableHandle
from exports import clone_export, multiplied_export, write_export
from items import (
    GOLDEN_EXPORT,
    GOLDEN_IDS,
    Item,
    Key,
    assert_items_equal,
    assert_table_equals,
    by_key,
    expected_for_clone,
    image_of,
    load_expected,
    read_jsonl,
)
from servers import DDBLocalServer, env_for_subprocess

# --- --limit and --shard ---------------------------------------------------------------------


def test_limit_copies_slices_until_everything_is_there(ddblocal_table: TableHandle, tmp_path: Path) -> None:
    copied = []
    for _ in range(3):
        result = run_cli(
            live_args(ddblocal_table.name, ddblocal_table.url, GOLDEN_EXPORT, "--limit", "2"),
            report=tmp_path / "limit.json",
        )
        assert result.returncode == 0 and result.report is not None, result.describe()
        copied.append(result.report["images"]["copied"])
    assert copied == [2, 2, 1]
    assert_table_equals(ddblocal_table.client, ddblocal_table.name, load_expected())


SHARDS = 3


def crc_shard(image_id: str, shards: int) -> int:
    """The documented rule, computed here on its own: CRC-32 of the lower-cased image id mod N."""
    return zlib.crc32(image_id.lower().encode("utf-8")) % shards


@pytest.fixture(scope="module")
def shard_export(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[Key, Item]]:
    """The golden export three times over (15 images), so that every shard of 3 gets images."""
    export_dir = tmp_path_factory.mktemp("shards") / "export"
    expected = multiplied_export(export_dir, 3)
    for k in range(SHARDS):
        assert any(crc_shard(image_of(key), SHARDS) == k for key in expected), f"shard {k} would be empty"
    return export_dir, expected


def shard_items(expected: dict[Key, Item], k: int) -> dict[Key, Item]:
    return {key: item for key, item in expected.items() if crc_shard(image_of(key), SHARDS) == k}


def test_each_shard_plans_exactly_its_images(shard_export: tuple[Path, dict[Key, Item]],
                                             tmp_path: Path) -> None:
    """Dry run of each shard with --dump-items: exactly the items of the images the CRC-32 rule
    gives that shard; together the shards are exactly the export, no image in two of them."""
    export_dir, expected = shard_export
    together: dict[Key, Item] = {}
    for k in range(SHARDS):
        dump = tmp_path / f"shard{k}.jsonl"
        args = ["--export-dir", str(export_dir), *BUCKET_FLAGS, "--no-progress", "--shard", f"{k}/{SHARDS}",
                "--dump-items", str(dump)]
        result = run_cli(args, env=env_for_subprocess(credentials=False))
        assert result.returncode == 0, result.describe()
        planned = by_key(read_jsonl(dump))
        assert_items_equal(planned, shard_items(expected, k))
        assert not set(planned) & set(together), f"shard {k} repeats items of another shard"
        together.update(planned)
    assert_items_equal(together, expected)


def test_each_shard_copies_exactly_its_images(shard_export: tuple[Path, dict[Key, Item]], tmp_path: Path,
                                              ddblocal_server: DDBLocalServer,
                                              table_factory: Any) -> None:
    """Each shard copied into a fresh table holds exactly its own images' items."""
    export_dir, expected = shard_export
    for k in range(SHARDS):
        table = table_factory(ddblocal_server)
        result = run_cli(live_args(table.name, table.url, export_dir, "--shard", f"{k}/{SHARDS}"),
                         report=tmp_path / f"shard{k}.json")
        assert result.returncode == 0, result.describe()
        wanted = shard_items(expected, k)
        assert_table_equals(table.client, table.name, wanted)
        assert result.report is not None
        assert result.report["images"]["copied"] == len({image_of(key) for key in wanted})


def upper_case_ids(count: int) -> list[str]:
    """``count`` upper-case UUIDs whose upper-case text hashes to another shard of SHARDS than
    their lower-case one: a shard rule that forgot to lower-case would file them elsewhere."""
    ids = []
    for n in range(200):
        candidate = str(uuid.uuid5(uuid.NAMESPACE_URL, f"upper-{n}")).upper()
        if zlib.crc32(candidate.encode("utf-8")) % SHARDS != crc_shard(candidate, SHARDS):
            ids.append(candidate)
    assert len(ids) >= count
    return ids[:count]


def test_an_upper_case_image_id_is_in_the_shard_of_its_lower_case_spelling(tmp_path: Path) -> None:
    """A UUID is the same id in any case, so an export filed under upper-case ids is sharded as
    its lower-case spelling is (CRC-32 of the lower-cased id): each image is planned by exactly
    the shard of its lower-case id, with its items under the id as the export spells it."""
    export_dir = tmp_path / "export"
    ids = upper_case_ids(2 * SHARDS)
    expected: dict[Key, Item] = {}
    for n, image_id in enumerate(ids):
        source = GOLDEN_IDS[n % len(GOLDEN_IDS)]
        write_export(export_dir, clone_export(source, image_id))
        expected.update(expected_for_clone(source, image_id))
    assert {image_of(key) for key in expected} == set(ids)  # every clone has receipts: all are planned
    for k in range(SHARDS):
        dump = tmp_path / f"shard{k}.jsonl"
        result = run_cli(["--export-dir", str(export_dir), *BUCKET_FLAGS, "--no-progress", "--shard",
                          f"{k}/{SHARDS}", "--dump-items", str(dump)],
                         env=env_for_subprocess(credentials=False), report=tmp_path / f"shard{k}.json")
        assert result.returncode == 0 and result.report is not None, result.describe()
        mine = {image_id for image_id in ids if crc_shard(image_id, SHARDS) == k}
        planned = by_key(read_jsonl(dump))
        assert {image_of(key) for key in planned} == mine, f"shard {k}"
        assert_items_equal(planned, {key: item for key, item in expected.items() if image_of(key) in mine})
        assert result.report["images"]["total"] == len(mine), (k, result.report["images"])


def test_shard_assignment_is_stable_across_processes(tmp_path: Path) -> None:
    """The same ids land in the same shard whatever the interpreter's hash seed."""

    def shard_members(seed: str) -> list[str]:
        dump = tmp_path / f"dump-{seed}.jsonl"
        env = env_for_subprocess(extra={"PYTHONHASHSEED": seed})
        result = run_cli(["--export-dir", str(GOLDEN_EXPORT), "--shard", "1/2", "--dump-items", str(dump),
                          *BUCKET_FLAGS], env=env)
        assert result.returncode == 0, result.describe()
        return sorted({item["PK"]["S"] for item in read_jsonl(dump)})

    assert shard_members("1") == shard_members("12345")


def test_bad_shard_is_a_usage_error(tmp_path: Path) -> None:
    for bad in ("3/3", "1", "a/b", "-1/2"):
        proc = run_cli(["--export-dir", str(GOLDEN_EXPORT), "--shard", bad])
        assert proc.returncode == 2, (bad, proc.stderr)
        assert "Traceback" not in proc.stderr


# --- --max-items-per-second ------------------------------------------------------------------


@pytest.mark.parametrize("rate", [150.0])
def test_rate_cap_holds(ddblocal_table: TableHandle, tmp_path: Path, rate: float) -> None:
    """756 golden items at 150 items/s need about 5 s however many workers there are."""
    start = time.monotonic()
    result = run_cli(
        live_args(
            ddblocal_table.name,
            ddblocal_table.url,
            GOLDEN_EXPORT,
            "--max-items-per-second",
            str(rate),
            "--max-workers",
            "10",
        ),
        report=tmp_path / "rate.json",
        timeout=120,
    )
    elapsed = time.monotonic() - start
    assert result.returncode == 0 and result.report is not None, result.describe()
    written = result.report["items"]["written"]
    assert written == len(load_expected())
    # The bucket starts empty and holds at most one second's worth (or one batch).
    assert elapsed >= (written - rate) / rate * 0.95, f"{written} items in {elapsed:.1f}s"
    assert written / elapsed <= rate * 1.1


