"""DynamoDB's item rules, with AWS's DynamoDB Local as the judge.

* The 400 KB item size, byte for byte: for every attribute type, the server's own boundary
  (found by bisection on the length of a padding string) is where the tool's size says
  409,600 bytes, and the tool accepts the item there and refuses it one byte over.
* The other rules (attribute names, nesting, numbers, key sizes, sets): the tool refuses
  exactly what the server refuses, at each boundary.
* An export mixing good images with one bad image per rule (plus a dangling symlink, a
  directory, a FIFO and a ``.JSON`` file), copied by the CLI: the bad ones fail by name and
  leave nothing in the table, the good ones and an item exactly at 400 KB are copied exactly.
* A rule the tool does not check (disabled here): the server refuses the batch, the tool
  writes that batch one item at a time and names the refused item's key, kind and reason.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError
from cli import live_args, run_cli
from conftest import TableHandle
from exports import clone_export, copy_golden, fake_uuid, write_export
from items import (
    IMG_META_AND_PLACE,
    IMG_VERBATIM,
    REPO_ROOT,
    by_key,
    canonical_item,
    expected_for_clone,
    load_expected,
    scan_all,
)
from servers import DDBLocalServer, LocalServer, env_for_subprocess

import copy_dynamodb_dev_to_prod as tool

LIMIT = tool.MAX_ITEM_BYTES
assert LIMIT == 409_600


# --------------------------------------------------------------------------- the server as judge


def put_error(table: TableHandle, item: dict[str, Any]) -> str | None:
    """None if the server stores ``item``, else its error ("Code: message")."""
    try:
        table.client.put_item(TableName=table.name, Item=item)
    except ClientError as exc:
        return f"{exc.response['Error']['Code']}: {exc.response['Error']['Message']}"
    return None


def server_boundary(table: TableHandle, make: Callable[[int], dict[str, Any]], guess: int) -> int:
    """The largest padding length n whose item ``make(n)`` the server stores. The window
    around ``guess`` is only a starting point: both of its ends are confirmed on the server
    before it is trusted, else the whole range is searched."""
    def fits(n: int) -> bool:
        return put_error(table, make(n)) is None

    lo, hi = max(0, guess - 40), guess + 40
    if not (fits(lo) and not fits(hi)):
        lo, hi = 0, LIMIT + 1
        assert fits(lo) and not fits(hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid
    return lo


def tool_accepts(item: dict[str, Any], kind: tool.KindSpec | None = None) -> bool:
    try:
        tool.check_item_limits(item, kind)
    except tool.InputError:
        return False
    return True


BASE = {"PK": {"S": "IMAGE#size-probe"}, "SK": {"S": "PROBE"}}

# One value of every attribute type, with the number forms whose size is easy to get wrong.
SIZE_CASES: dict[str, dict[str, Any]] = {
    "S_ascii": {"S": "hello"},
    "S_multibyte": {"S": "é€😀"},
    "S_empty": {"S": ""},
    "N_positive": {"N": "12345"},
    "N_negative": {"N": "-12345"},
    "N_integer_trailing_zeros": {"N": "1000000"},
    "N_negative_trailing_zeros": {"N": "-1000000"},
    "N_zero": {"N": "0"},
    "N_fraction": {"N": "123.456"},
    "N_short_fraction": {"N": "1.1"},
    "N_negative_fraction": {"N": "-0.5"},
    "N_small_fraction": {"N": "0.0001234"},
    "N_fraction_trailing_zeros": {"N": "10.50"},
    "N_exponent_1e20": {"N": "1e20"},
    "N_exponent_1.5e-07": {"N": "1.5e-07"},
    "N_10_pow_30": {"N": str(10**30)},
    "N_38_digits_odd_alignment": {"N": "1.2345678901234567890123456789012345678"},
    "N_38_digits_odd_alignment_negative": {"N": "-1.2345678901234567890123456789012345678"},
    "N_38_digits_integer_negative": {"N": "-12345678901234567890123456789012345678"},
    "N_max": {"N": "9.9999999999999999999999999999999999999E+125"},
    "N_min": {"N": "-1E-130"},
    "B": {"B": b"\x00\xffabc"},
    "BOOL": {"BOOL": False},
    "NULL": {"NULL": True},
    "L": {"L": [{"S": "a"}, {"N": "-1.1"}, {"NULL": True}, {"L": []}]},
    "L_empty": {"L": []},
    "M": {"M": {"k": {"S": "v"}, "é": {"N": "-12.5"}, "m": {"M": {}}, "b": {"BOOL": True}}},
    "M_empty": {"M": {}},
    "SS": {"SS": ["a", "bb", "é"]},
    "NS": {"NS": ["1", "-1", "1.5", "100", "123.456"]},
    "BS": {"BS": [b"a", b"bc"]},
}


@pytest.mark.parametrize("value", SIZE_CASES.values(), ids=SIZE_CASES.keys())
def test_item_size_boundary_matches_server(ddblocal_table: TableHandle, value: dict[str, Any]) -> None:
    def make(n: int) -> dict[str, Any]:
        return {**BASE, "attr": copy.deepcopy(value), "pad": {"S": "x" * n}}

    n = server_boundary(ddblocal_table, make, LIMIT - tool.item_size(make(0)))
    # the server stores make(n) and refuses make(n + 1): the tool's size and check agree
    assert tool.item_size(make(n)) == LIMIT
    assert tool_accepts(make(n))
    assert not tool_accepts(make(n + 1))


# Golden items through the tool's fast path (check_item_limits with the kind), padded
# through a string attribute: a place with three negative coordinates, a receipt word.
KIND_CASES = {
    "place_negative_coordinates": ("RECEIPT_PLACE", "reasoning"),
    "receipt_word": ("RECEIPT_WORD", "text"),
    "receipt_line": ("RECEIPT_LINE", "text"),
    "ocr_job": ("OCR_JOB", "s3_key"),
}


def golden_item(item_type: str) -> dict[str, Any]:
    for _, item in sorted(load_expected([IMG_META_AND_PLACE]).items()):
        if item["TYPE"]["S"] == item_type:
            return item
    raise AssertionError(item_type)


@pytest.mark.parametrize("item_type,attribute", KIND_CASES.values(), ids=KIND_CASES.keys())
def test_item_size_boundary_of_golden_kinds(ddblocal_table: TableHandle, item_type: str,
                                            attribute: str) -> None:
    item = golden_item(item_type)
    kind = tool.KINDS_BY_TYPE[item_type]
    if item_type == "RECEIPT_PLACE":
        assert sum(v["N"].startswith("-") for v in item.values() if "N" in v) == 3

    def make(n: int) -> dict[str, Any]:
        return dict(item, **{attribute: {"S": "x" * n}})

    n = server_boundary(ddblocal_table, make, LIMIT - tool.item_size(make(0)))
    assert tool.item_size(make(n)) == LIMIT
    assert tool_accepts(make(n), kind)
    assert not tool_accepts(make(n + 1), kind)


# --------------------------------------------------------------------------- the other rules


def to_ddb(v: Any) -> dict[str, Any]:
    """JSON -> AttributeValue with no checks at all (what a careless tool would send)."""
    if v is None:
        return {"NULL": True}
    if isinstance(v, bool):
        return {"BOOL": v}
    if isinstance(v, (int, float)):
        return {"N": str(v) if isinstance(v, int) else repr(v)}
    if isinstance(v, str):
        return {"S": v}
    if isinstance(v, list):
        return {"L": [to_ddb(x) for x in v]}
    return {"M": {k: to_ddb(x) for k, x in v.items()}}


def nested(containers: int, kind: str = "M") -> Any:
    """A document of exactly ``containers`` maps (or lists) nested in one another."""
    v: Any = "x"
    for _ in range(containers):
        v = {"a": v} if kind == "M" else [v]
    return v


def tool_accepts_document(v: Any) -> bool:
    """What the tool does with a free-form map such as hours_data: convert, then check."""
    try:
        tool.check_item_limits({**BASE, "doc": tool.generic_value(v)})
    except (tool.FieldError, tool.InputError):
        return False
    return True


DOCUMENT_CASES: dict[str, Any] = {
    "nesting_31_maps": nested(31),
    "nesting_32_maps": nested(32),
    "nesting_33_maps": nested(33),
    "nesting_31_lists": nested(31, "L"),
    "nesting_32_lists": nested(32, "L"),
    "nesting_31_mixed": {"a": nested(30, "L")},
    "nesting_32_mixed": {"a": nested(31, "L")},
    "empty_map_key": {"": "x"},
    "empty_nested_map_key": {"a": [{"": 1}]},
    "map_key_65535_bytes": {"k" * 65_535: 1},
    "map_key_65536_bytes": {"k" * 65_536: 1},
    "map_key_65535_bytes_multibyte": {"é" * 32_767 + "k": 1},
    "map_key_65536_bytes_multibyte": {"é" * 32_768: 1},
    "integer_38_digits": {"n": 10**38 - 1},
    "integer_39_digits": {"n": 10**38 + 1},
    "integer_1e38": {"n": 10**38},
    "integer_10_pow_125": {"n": -(10**125)},
    "integer_10_pow_126": {"n": 10**126},
    "float_max": {"n": 9.999999999999999e125},
    "float_over_max": {"n": 1e126},
    "float_min": {"n": -1e-130},
    "float_under_min": {"n": 9.9e-131},
    "float_negative_exponent": [1.5e-07, -2.5e-100],
}


@pytest.mark.parametrize("doc", DOCUMENT_CASES.values(), ids=DOCUMENT_CASES.keys())
def test_document_rules_match_server(ddblocal_table: TableHandle, doc: Any) -> None:
    error = put_error(ddblocal_table, {**BASE, "doc": to_ddb(doc)})
    assert tool_accepts_document(doc) == (error is None), error


def test_nesting_depth_is_counted_in_containers(ddblocal_table: TableHandle) -> None:
    """32 nested containers are refused even when the innermost one is empty (so "level"
    counts containers, not the depth of a scalar)."""
    v: Any = {}
    for _ in range(31):
        v = {"a": v}
    assert put_error(ddblocal_table, {**BASE, "doc": to_ddb(v)}) is not None
    assert not tool_accepts_document(v)
    assert put_error(ddblocal_table, {**BASE, "doc": to_ddb(v["a"])}) is None
    assert tool_accepts_document(v["a"])


def test_deep_documents_are_field_errors_not_recursion() -> None:
    for depth in (40, 600, 5_000):
        with pytest.raises(tool.FieldError, match="nested deeper"):
            tool.generic_value(nested(depth))
    # deeper than Python's JSON parser goes: the scan for the field does not recurse
    text = ('{"images": [{"text": "a, [{"}], "receipt_places": [{}, {"reasoning": "}", '
            '"hours_data": ' + '{"a": ' * 100_000 + "1" + "}" * 100_000 + "}]}")
    with pytest.raises(RecursionError):
        json.loads(text)
    error = tool.nesting_error(text)
    assert (error.entity, error.index, error.field) == ("receipt_places", 1, "hours_data")


KEY_CASES = {
    "PK_2048": ("PK", "p" * 2048), "PK_2049": ("PK", "p" * 2049),
    "PK_2048_bytes_multibyte": ("PK", "é" * 1024), "PK_2050_bytes_multibyte": ("PK", "é" * 1025),
    "SK_1024": ("SK", "s" * 1024), "SK_1025": ("SK", "s" * 1025),
    "GSI1PK_2048": ("GSI1PK", "g" * 2048), "GSI1PK_2049": ("GSI1PK", "g" * 2049),
    "GSI2SK_1024": ("GSI2SK", "s" * 1024), "GSI2SK_1025": ("GSI2SK", "s" * 1025),
    "GSI3SK_1024_bytes_multibyte": ("GSI3SK", "€" * 341 + "x"),
    "GSI3SK_1026_bytes_multibyte": ("GSI3SK", "€" * 342),
    "GSI4PK_empty": ("GSI4PK", ""),
}


@pytest.mark.parametrize("name,value", KEY_CASES.values(), ids=KEY_CASES.keys())
def test_key_sizes_match_server(ddblocal_table: TableHandle, name: str, value: str) -> None:
    item = {**BASE, name: {"S": value}}
    if name.startswith("GSI"):  # an index key needs both halves to be indexed
        other = name[:4] + ("SK" if name.endswith("PK") else "PK")
        item[other] = {"S": "x"}
    error = put_error(ddblocal_table, item)
    assert tool_accepts(item) == (error is None), error


def test_sets_match_server(ddblocal_table: TableHandle) -> None:
    codec = tool.string_list(as_set=True)
    assert codec([]) is tool.OMIT  # the tool never writes an empty set ...
    assert put_error(ddblocal_table, {**BASE, "s": {"SS": []}}) is not None  # ... the server refuses one
    with pytest.raises(tool.FieldError):
        codec(["name", "name"])
    assert put_error(ddblocal_table, {**BASE, "s": {"SS": ["name", "name"]}}) is not None
    assert put_error(ddblocal_table, {**BASE, "s": codec(["name", "phone"])}) is None


def test_lone_surrogate_is_refused_by_name() -> None:
    item = {**BASE, "text": {"S": "ok\ud800"}}
    with pytest.raises(tool.InputError) as err:
        tool.check_item_limits(item)
    assert err.value.field == "text"
    with pytest.raises(tool.InputError):  # in a map key too (value_size encodes every key)
        tool.check_item_limits({**BASE, "doc": tool.generic_value({"k\udc00": 1})})


# --------------------------------------------------------------------------- export entries


def test_every_entry_named_like_an_export_file_is_listed(tmp_path: Path) -> None:
    ok = write_export(tmp_path, clone_export(IMG_VERBATIM, fake_uuid(1, "e0")),
                      name=f"{fake_uuid(1, 'e0')}.JSON")
    (tmp_path / f"{fake_uuid(2, 'e0')}.json").mkdir()
    (tmp_path / f"{fake_uuid(3, 'e0')}.json").symlink_to(tmp_path / "nowhere.json")
    os.mkfifo(tmp_path / f"{fake_uuid(4, 'e0')}.json")
    (tmp_path / "notes.txt").write_text("not an export file")
    listed = tool.list_export_files(tmp_path)
    assert [p.stem for p in listed] == [fake_uuid(n, "e0") for n in (1, 2, 3, 4)]
    assert tool.read_export_file(ok)["images"][0]["image_id"] == fake_uuid(1, "e0")
    reasons = {}
    for path in listed[1:]:
        with pytest.raises(tool.InputError) as err:
            tool.read_export_file(path)  # the FIFO must not block: it is never opened
        reasons[path.stem] = err.value.message
    assert "directory" in reasons[fake_uuid(2, "e0")]
    assert "dangling symlink" in reasons[fake_uuid(3, "e0")]
    assert "FIFO" in reasons[fake_uuid(4, "e0")]
    # the same image under both spellings: one file per image, the other spelling fails
    write_export(tmp_path, clone_export(IMG_VERBATIM, fake_uuid(1, "e0")))
    with pytest.raises(tool.InputError, match="same image"):
        tool.read_export_file(ok)
    assert tool.read_export_file(tmp_path / f"{fake_uuid(1, 'e0')}.json")


# --------------------------------------------------------------------------- the CLI on a mixed export


def place_item(expected: dict[tuple[str, str], Any]) -> dict[str, Any]:
    return next(i for i in expected.values() if i["TYPE"]["S"] == "RECEIPT_PLACE")


def word_key(expected: dict[tuple[str, str], Any], index: int = 0) -> tuple[str, str]:
    return sorted(k for k, i in expected.items() if i["TYPE"]["S"] == "RECEIPT_WORD")[index]


class MixedExport:
    """Good images, one bad image per rule, and broken entries, in one export dir."""

    def __init__(self, root: Path, scratch: TableHandle) -> None:
        self.dir = root / "export"
        self.expected: dict[tuple[str, str], Any] = {}
        self.bad: dict[str, tuple[str | None, str | None, str]] = {}  # file -> entity, field, text
        self.ids = iter(range(1, 100))
        copy_golden(self.dir, [IMG_META_AND_PLACE, IMG_VERBATIM])
        self.expected.update(load_expected([IMG_META_AND_PLACE, IMG_VERBATIM]))
        self.scratch = scratch

    def new_id(self) -> str:
        return fake_uuid(next(self.ids), "b1d")

    def good(self, data: dict[str, Any], expected: dict[tuple[str, str], Any],
             name: str | None = None) -> None:
        write_export(self.dir, data, name)
        self.expected.update(expected)

    def bad_image(self, edit: Callable[[dict[str, Any]], Any], entity: str | None, field: str | None,
                  text: str, base: str = IMG_META_AND_PLACE) -> str:
        image_id = self.new_id()
        data = clone_export(base, image_id)
        edit(data)
        write_export(self.dir, data)
        self.bad[f"{image_id}.json"] = (entity, field, text)
        return image_id

    def bad_text(self, image_id: str, text: str, entity: str | None, field: str | None, message: str) -> None:
        (self.dir / f"{image_id}.json").write_text(text, encoding="utf-8")
        self.bad[f"{image_id}.json"] = (entity, field, message)

    def bad_entry(self, make: Callable[[Path], None], message: str) -> None:
        name = f"{self.new_id()}.json"
        make(self.dir / name)
        self.bad[name] = (None, None, message)

    def boundary_pair(self, item_type: str, list_name: str, attribute: str,
                      pick: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
        """Two clones whose one item is padded to exactly 400 KB (per the server: bisection
        in a scratch table) and to one byte more: the first is good, the second bad."""
        at_limit = self.new_id()
        expected = expected_for_clone(IMG_META_AND_PLACE, at_limit)
        key = next(k for k, i in sorted(expected.items()) if i["TYPE"]["S"] == item_type)
        item = expected[key]

        def make(n: int) -> dict[str, Any]:
            return dict(item, **{attribute: {"S": "x" * n}})

        n = server_boundary(self.scratch, make, LIMIT - tool.item_size(make(0)))
        data = clone_export(IMG_META_AND_PLACE, at_limit)
        pick(data)[attribute] = "x" * n
        expected[key] = make(n)
        self.good(data, expected)
        self.bad_image(lambda d: pick(d).__setitem__(attribute, "x" * (n + 1)), list_name, attribute,
                       "400 KB")


def setf(list_name: str, index: int, **values: Any) -> Callable[[dict[str, Any]], None]:
    return lambda d: d[list_name][index].update(values)


def build_mixed_export(root: Path, scratch: TableHandle) -> MixedExport:
    ex = MixedExport(root, scratch)
    # -- good: a .JSON file (read like .json), a document at the edges DynamoDB accepts
    upper = ex.new_id()
    ex.good(clone_export(IMG_VERBATIM, upper), expected_for_clone(IMG_VERBATIM, upper), name=f"{upper}.JSON")
    edge = ex.new_id()
    data = clone_export(IMG_META_AND_PLACE, edge)
    doc = {"k" * 65_535: nested(30), "n": [-1.5e-07, 10**37, -(10**125)]}
    data["receipt_places"][0]["hours_data"] = doc
    expected = expected_for_clone(IMG_META_AND_PLACE, edge)
    place_item(expected)["hours_data"] = to_ddb(doc)
    ex.good(data, expected)
    # -- items at the 400 KB boundary (copied) and one byte over (failed)
    ex.boundary_pair("RECEIPT_PLACE", "receipt_places", "reasoning", lambda d: d["receipt_places"][0])
    ex.boundary_pair("RECEIPT_WORD", "receipt_words", "text", lambda d: d["receipt_words"][0])
    # -- one bad image per rule
    places, words = "receipt_places", "receipt_words"
    ex.bad_image(setf(places, 0, address_components={"": "x"}), places, "address_components", "empty map key")
    ex.bad_image(setf(places, 0, hours_data={"h" * 65_536: 1}), places, "hours_data", "65,536 bytes")
    ex.bad_image(setf(words, 3, extracted_data={"": "v"}), words, "extracted_data", "empty map key")
    ex.bad_image(setf(words, 4, extracted_data={"é" * 32_768: "v"}), words, "extracted_data", "65,536 bytes")
    ex.bad_image(setf(places, 0, hours_data={"d": nested(31)}), places, "hours_data", "nested")
    ex.bad_image(setf(places, 0, hours_data={"d": nested(600, "L")}), places, "hours_data", "nested")
    deep_id = ex.new_id()
    text = json.dumps(clone_export(IMG_META_AND_PLACE, deep_id), indent=1)
    deep = "[" * 100_000 + "]" * 100_000
    text = text.replace('"hours_data": {', '"hours_data": {"deep": ' + deep + ", ", 1)
    ex.bad_text(deep_id, text, places, "hours_data", "nested")
    ex.bad_image(setf(places, 0, hours_data={"n": 10**38 + 1}), places, "hours_data", "38")
    ex.bad_image(setf(places, 0, hours_data={"n": 1e200}), places, "hours_data", "range")
    ex.bad_image(setf(places, 0, place_id="P" * 2100), places, "GSI2PK", "2048 bytes")
    ex.bad_image(setf("receipt_word_labels", 2, label="L" * 1100), "receipt_word_labels", "SK", "1024 bytes")
    ex.bad_image(setf("receipt_metadatas", 0, matched_fields=["name", "name"]), "receipt_metadatas",
                 "matched_fields", "unique")
    surrogate_id = ex.new_id()
    text = json.dumps(clone_export(IMG_META_AND_PLACE, surrogate_id), indent=1)
    ex.bad_text(surrogate_id, text.replace('"text": "', '"text": "\\udc80', 1), "lines", "text", "Unicode")
    # -- entries that look like export files but are none
    ex.bad_entry(lambda p: p.symlink_to(p.parent / "gone" / p.name), "dangling symlink")
    ex.bad_entry(lambda p: p.mkdir(), "directory")
    ex.bad_entry(os.mkfifo, "FIFO")
    return ex


@pytest.fixture
def ddblocal_tables(ddblocal_server: DDBLocalServer,
                    table_factory: Callable[[LocalServer], TableHandle]) -> tuple[TableHandle, TableHandle]:
    """The target table and a scratch table for finding boundaries."""
    return table_factory(ddblocal_server), table_factory(ddblocal_server)


def test_mixed_export_on_ddblocal(tmp_path: Path, ddblocal_tables: tuple[TableHandle, TableHandle]) -> None:
    table, scratch = ddblocal_tables
    ex = build_mixed_export(tmp_path, scratch)
    report_path = tmp_path / "report.json"
    args = live_args(table.name, table.url, ex.dir, "--report", str(report_path))
    result = run_cli(args, env=env_for_subprocess(), timeout=300)
    assert result.returncode == 1, result.output
    assert "Traceback" not in result.output and "unexpected error" not in result.output, result.output
    report = json.loads(report_path.read_text(encoding="utf-8"))

    errors_by_file: dict[str, list[dict[str, Any]]] = {}
    for error in report["errors"]:
        errors_by_file.setdefault(error["file"], []).append(error)
    assert sorted(errors_by_file) == sorted(ex.bad), report["errors"]
    for name, (entity, field, text) in ex.bad.items():
        [error] = errors_by_file[name]
        assert error["entity"] == entity, error
        if field is not None:
            assert error["field"] == field, error
        assert text.lower() in error["message"].lower(), error
        assert name in result.stdout  # named in the summary too
    good_images = len({pk for pk, _ in ex.expected})
    assert report["images"] == dict(report["images"], total=good_images + len(ex.bad), copied=good_images,
                                     failed=len(ex.bad))

    items = by_key(scan_all(table.client, table.name))
    bad_pks = {f"IMAGE#{Path(name).stem}" for name in ex.bad}
    assert not {pk for pk, _ in items} & bad_pks, "an item of a bad image reached the table"
    # DynamoDB Local keeps numbers, not their text ("1e20" comes back as 100000000000000000000)
    assert sorted(items) == sorted(ex.expected)
    for key, item in ex.expected.items():
        assert canonical_item(items[key]) == canonical_item(item), key
    sizes = sorted(tool.item_size(i) for i in items.values())
    assert sizes[-2:] == [LIMIT, LIMIT]  # the two boundary items, stored at exactly 400 KB


# --------------------------------------------------------------------------- a rule nobody foresaw


def test_refused_batch_names_the_item(tmp_path: Path, ddblocal_table: TableHandle) -> None:
    """With the map-key check switched off in the CLI process, an empty map key reaches the
    server, which refuses the whole batch; the tool finds the item by writing that batch one
    item at a time and names its key, kind and the server's reason; the image stays without
    its IMAGE item, the other image is copied exactly."""
    export_dir = tmp_path / "export"
    copy_golden(export_dir, [IMG_VERBATIM])
    bad_id = fake_uuid(1, "bad5")
    data = clone_export(IMG_META_AND_PLACE, bad_id)
    data["receipt_places"][0]["address_components"] = {"": "x", "country": "US"}
    write_export(export_dir, data)
    report_path = tmp_path / "report.json"
    code = ("import sys; sys.path.insert(0, sys.argv.pop(1)); import copy_dynamodb_dev_to_prod as t; "
            "t.map_key = str; sys.exit(t.main(sys.argv[1:]))")
    proc = subprocess.run([sys.executable, "-c", code, str(REPO_ROOT),
                           *live_args(ddblocal_table.name, ddblocal_table.url, export_dir, "--report",
                                      str(report_path))],
                          env=env_for_subprocess(), stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    report = json.loads(report_path.read_text(encoding="utf-8"))
    [error] = report["errors"]
    pk, sk = f"IMAGE#{bad_id}", "RECEIPT#00001#PLACE"
    assert error["file"] == f"{bad_id}.json"
    assert error["entity"] == "receipt_places" and error["field"] == sk, error
    for part in (pk, sk, "RECEIPT_PLACE", "ValidationException", "Empty attribute name"):
        assert part in error["message"], (part, error)
    assert report["images"] == dict(report["images"], total=2, copied=1, failed=1)

    items = by_key(scan_all(ddblocal_table.client, ddblocal_table.name))
    assert (pk, "IMAGE") not in items
    assert (pk, sk) not in items
    # every other item of the bad image went in (its batch was written one by one)
    others = {k for k in expected_for_clone(IMG_META_AND_PLACE, bad_id) if k not in ((pk, "IMAGE"), (pk, sk))}
    assert {k for k in items if k[0] == pk} == others
    good = load_expected([IMG_VERBATIM])
    assert sorted(k for k in items if k[0] != pk) == sorted(good)
    for key, item in good.items():
        assert canonical_item(items[key]) == canonical_item(item), key


def test_batch_writer_singles_out_every_refused_item(ddblocal_table: TableHandle) -> None:
    """In process, on DynamoDB Local: a batch with two items the server refuses (an empty map
    key, a number with 39 digits) among good ones. The good ones are written one by one, the
    error names the first refused item and counts the other, both are `unwritten`."""
    items = []
    for n in range(6):
        item = copy.deepcopy(golden_item("RECEIPT_WORD"))
        item["SK"] = {"S": f"RECEIPT#00001#LINE#00001#WORD#{n:05d}"}
        items.append(item)
    items[2]["extracted_data"] = {"M": {"": {"S": "x"}}}
    items[4]["extracted_data"] = {"M": {"n": {"N": "1" * 39}}}
    writer = tool.BatchWriter(ddblocal_table.client, ddblocal_table.name, tool.Retrier(0))
    with pytest.raises(tool.WriteError) as err:
        writer.write(items)
    exc = err.value
    assert exc.refused is items[2]
    assert [i["SK"] for i in exc.unwritten] == [items[2]["SK"], items[4]["SK"]]
    message = str(exc)
    for part in (items[2]["PK"]["S"], items[2]["SK"]["S"], "RECEIPT_WORD", "ValidationException",
                 "Empty attribute name", "1 more item(s)"):
        assert part in message, (part, message)
    record = exc.input_error()
    assert (record.entity, record.field) == ("receipt_words", items[2]["SK"]["S"])
    stored = {i["SK"]["S"] for i in scan_all(ddblocal_table.client, ddblocal_table.name)}
    assert stored == {items[n]["SK"]["S"] for n in (0, 1, 3, 5)}
