"""What the tool reads of prod before it writes (issue 11.9 and 19.6: these reads were the
gap between a copy and plain writes of the same items, most of all over a long round trip).

An image is written in stages (its first item, the rest, its IMAGE item last), so two keys
speak for it: the IMAGE item (prod has the whole image) and the first item, the one with
the smallest SK (an earlier copy started it). An image prod lacks costs one lookup of its
first item, packed with other images' into BatchGetItem requests; nothing else of it is
read, and no Query is sent. Its first item there: every key is read and diffed as before,
so nothing prod holds is overwritten unseen. Judged on DynamoDB Local, from what the tool
sent through the fault proxy (no faults injected here). Also: an unforeseen error on the
way from reading to writing fails that one image.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from cli import copy_in_process, in_process_config, run_through
from conftest import TableHandle
from items import GOLDEN_IDS, Item, canonical_item, first_keys, load_expected, put_items, table_values

import copy_dynamodb_dev_to_prod as tool


def test_an_image_prod_lacks_costs_one_packed_key_read_and_no_query(ddblocal_table: TableHandle,
                                                                    tmp_path: Path) -> None:
    result, proxy = run_through(ddblocal_table, tmp_path, faults=[], target="BatchGetItem")
    assert result.returncode == 0 and result.report is not None, result.describe()
    expected = load_expected()
    assert "Query" not in proxy.calls, proxy.calls
    # the keys read: which IMAGE items prod has, then each image's first item, nothing else
    firsts = set(first_keys(expected).values())
    sends = proxy.key_sends("BatchGetItem")
    assert sorted(sends) == sorted({(f"IMAGE#{i}", "IMAGE") for i in GOLDEN_IDS} | firsts), sends
    # packed: the five images' first items in fewer requests than images (one, on an idle pool)
    key_reads = [p for p in proxy.payloads("BatchGetItem")
                 if "ProjectionExpression" not in p["RequestItems"][ddblocal_table.name]]
    assert len(key_reads) < len(GOLDEN_IDS), key_reads
    assert table_values(ddblocal_table.client, ddblocal_table.name) == \
        {k: canonical_item(v) for k, v in expected.items()}


def test_an_image_started_is_read_key_by_key(ddblocal_table: TableHandle, tmp_path: Path) -> None:
    """Image A: its first item and a quarter of the others, no IMAGE item (an interrupted
    copy), its first item changed in prod since: read key by key, the changed item is a
    conflict kept as prod has it. Image B: only an item the export does not have: its first
    item is not there, so only that key is read; B is copied and its own item stays."""
    expected = load_expected()
    a, b = GOLDEN_IDS[0], GOLDEN_IDS[1]
    partial = sorted(k for k in expected if k[0] == f"IMAGE#{a}" and k[1] != "IMAGE")[::4]
    changed_key = partial[0]
    assert changed_key == first_keys(expected)[f"IMAGE#{a}"]
    changed = {**expected[changed_key], "prod_note": {"S": "changed in prod"}}
    foreign: Item = {"PK": {"S": f"IMAGE#{b}"}, "SK": {"S": "PROD_ONLY#1"}, "TYPE": {"S": "PROD_ONLY"}}
    prod = [changed, *(expected[k] for k in partial[1:]), foreign]
    put_items(ddblocal_table.client, ddblocal_table.name, prod)

    result, proxy = run_through(ddblocal_table, tmp_path, faults=[], target="BatchGetItem")
    assert result.returncode == 0 and result.report is not None, result.describe()
    assert "Query" not in proxy.calls, proxy.calls
    read = set(proxy.key_sends("BatchGetItem"))
    firsts = first_keys(expected)
    for image_id in GOLDEN_IDS:
        keys = {k for k in expected if k[0] == f"IMAGE#{image_id}"}
        if image_id == a:
            assert keys <= read, f"{image_id}: prod holds items of it, yet not every key was read"
        else:
            assert read & keys == {(f"IMAGE#{image_id}", "IMAGE"), firsts[f"IMAGE#{image_id}"]}, image_id

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

    def diff(items: Any, prod: Any, overwrite_changed: bool, mirror: bool = False) -> Any:
        if items and items[0]["PK"]["S"] == f"IMAGE#{victim}":
            raise RuntimeError("unforeseen")
        return real_diff(items, prod, overwrite_changed, mirror)

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


def test_check_partitions_finds_a_partial_image_left_in_any_order(ddblocal_table: TableHandle,
                                                                  tmp_path: Path) -> None:
    """A partial image as version 1.0 could leave it (items in any order: not its first item,
    not its IMAGE item), one of its lines embedded by prod since and one item changed in
    prod. --check-partitions Queries the partition of every image whose IMAGE and first item
    prod lacks: that image is read key by key, prod's change is kept as a conflict and its
    embedding progress is left alone; the fresh images are copied whole."""
    expected = load_expected()
    a = GOLDEN_IDS[0]
    first = first_keys(expected)[f"IMAGE#{a}"]
    partial = [k for k in sorted(expected) if k[0] == f"IMAGE#{a}" and k not in (first, (k[0], "IMAGE"))]
    line_key = next(k for k in partial if expected[k]["TYPE"]["S"] == "RECEIPT_LINE")
    changed_key = next(k for k in partial if expected[k]["TYPE"]["S"] == "LINE")
    embedded = {**expected[line_key], "embedding_status": {"S": "SUCCESS"},
                "GSI1PK": {"S": "EMBEDDING_STATUS#SUCCESS"}}
    changed = {**expected[changed_key], "prod_note": {"S": "changed in prod"}}
    prod = {k: expected[k] for k in partial} | {line_key: embedded, changed_key: changed}
    put_items(ddblocal_table.client, ddblocal_table.name, list(prod.values()))

    result, proxy = run_through(ddblocal_table, tmp_path, "--check-partitions", faults=[],
                                target="Query")
    assert result.returncode == 0 and result.report is not None, result.describe()
    queried = sorted(q["ExpressionAttributeValues"][":pk"]["S"] for q in proxy.payloads("Query"))
    assert queried == sorted(f"IMAGE#{i}" for i in GOLDEN_IDS), queried
    assert [(c["PK"], c["SK"]) for c in result.report["conflicts"]] == [changed_key]
    assert result.report["items"]["prod_progress_kept"] == 1
    want = {k: canonical_item(v) for k, v in expected.items()}
    want[changed_key], want[line_key] = canonical_item(changed), canonical_item(embedded)
    assert table_values(ddblocal_table.client, ddblocal_table.name) == want
