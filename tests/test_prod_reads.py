"""What the tool reads of prod before it writes (issue 11.9: these reads were the gap
between a copy and plain writes of the same items).

An image whose IMAGE item prod lacks (the usual case of a copy) is first probed with one
strongly consistent Query of its partition that stops at the first item. Nothing there:
none of its keys is read, every item is to be written. Anything there (an earlier copy
stopped before its IMAGE item, an item made in prod): every key is read and diffed as
before, so nothing prod holds is overwritten unseen. Judged on DynamoDB Local, from what
the tool sent through the fault proxy (no faults injected here). Also: an unforeseen error
on the way from reading to writing fails that one image.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from cli import copy_in_process, in_process_config, run_through
from conftest import TableHandle
from items import GOLDEN_IDS, Item, canonical_item, load_expected, put_items, table_values

import copy_dynamodb_dev_to_prod as tool


def probed_partitions(proxy: Any) -> list[str]:
    queries = proxy.payloads("Query")
    assert all(q["Limit"] == 1 and q["ConsistentRead"] is True for q in queries), queries
    return sorted(q["ExpressionAttributeValues"][":pk"]["S"] for q in queries)


def test_an_image_prod_lacks_costs_one_query_and_no_key_reads(ddblocal_table: TableHandle,
                                                              tmp_path: Path) -> None:
    result, proxy = run_through(ddblocal_table, tmp_path, faults=[], target="Query")
    assert result.returncode == 0 and result.report is not None, result.describe()
    assert probed_partitions(proxy) == sorted(f"IMAGE#{i}" for i in GOLDEN_IDS)
    # the only keys read are the IMAGE items (which images prod has), none per item
    assert set(proxy.key_sends("BatchGetItem")) == {(f"IMAGE#{i}", "IMAGE") for i in GOLDEN_IDS}
    assert table_values(ddblocal_table.client, ddblocal_table.name) == \
        {k: canonical_item(v) for k, v in load_expected().items()}


def test_anything_in_the_partition_and_every_key_is_read(ddblocal_table: TableHandle,
                                                          tmp_path: Path) -> None:
    """Image A: a quarter of its items, no IMAGE item, one of them changed in prod since.
    Image B: only an item the export does not have. Both are read key by key: A's changed
    item is a conflict kept as prod has it, B's own item stays; the rest is copied."""
    expected = load_expected()
    a, b = GOLDEN_IDS[0], GOLDEN_IDS[1]
    partial = sorted(k for k in expected if k[0] == f"IMAGE#{a}" and k[1] != "IMAGE")[::4]
    changed_key = partial[0]
    changed = {**expected[changed_key], "prod_note": {"S": "changed in prod"}}
    foreign: Item = {"PK": {"S": f"IMAGE#{b}"}, "SK": {"S": "PROD_ONLY#1"}, "TYPE": {"S": "PROD_ONLY"}}
    prod = [changed, *(expected[k] for k in partial[1:]), foreign]
    put_items(ddblocal_table.client, ddblocal_table.name, prod)

    result, proxy = run_through(ddblocal_table, tmp_path, faults=[], target="Query")
    assert result.returncode == 0 and result.report is not None, result.describe()
    assert probed_partitions(proxy) == sorted(f"IMAGE#{i}" for i in GOLDEN_IDS)
    read = set(proxy.key_sends("BatchGetItem"))
    for image_id in GOLDEN_IDS:
        keys = {k for k in expected if k[0] == f"IMAGE#{image_id}"}
        if image_id in (a, b):
            assert keys <= read, f"{image_id}: prod holds items of it, yet not every key was read"
        else:
            assert read & keys == {(f"IMAGE#{image_id}", "IMAGE")}, image_id

    conflicts = [(c["PK"], c["SK"]) for c in result.report["conflicts"]]
    assert conflicts == [changed_key], result.report["conflicts"]
    want = {k: canonical_item(v) for k, v in expected.items()}
    want[changed_key] = canonical_item(changed)
    want[(f"IMAGE#{b}", "PROD_ONLY#1")] = canonical_item(foreign)
    assert table_values(ddblocal_table.client, ddblocal_table.name) == want
    assert result.report["items"]["written"] == len(expected) - len(partial)


def test_an_unforeseen_error_fails_that_image_alone(ddblocal_table: TableHandle,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A bug met while deciding one image (here: the diff raising) fails that image by
    name with "internal error", writes nothing of it, and every other image is copied."""
    victim = GOLDEN_IDS[1]
    real_diff = tool.diff_with_prod

    def diff(items: Any, prod: Any, overwrite_changed: bool) -> Any:
        if items and items[0]["PK"]["S"] == f"IMAGE#{victim}":
            raise RuntimeError("unforeseen")
        return real_diff(items, prod, overwrite_changed)

    monkeypatch.setattr(tool, "diff_with_prod", diff)
    cfg = in_process_config(ddblocal_table.name, ddblocal_table.url)
    report = copy_in_process(cfg, tool.make_client(cfg))

    assert report.failed_images() == [victim]
    messages = [e["message"] for e in report.errors()]
    assert messages == ["internal error: RuntimeError: unforeseen"], report.errors()
    assert report.image_counts()["copied"] == len(GOLDEN_IDS) - 1
    expected = load_expected([i for i in GOLDEN_IDS if i != victim])
    assert table_values(ddblocal_table.client, ddblocal_table.name) == \
        {k: canonical_item(v) for k, v in expected.items()}
