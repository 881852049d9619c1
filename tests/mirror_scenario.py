"""A prod table as an older OCR left it, and what ``--mirror --delete-missing`` must make of it
(issue 21): the scenario of ``test_mirror.py``.

The source is a tmp export dir of four golden images; prod is prepared with the low-level client
(never with the tool):

* ``A`` (:data:`IMG_A`), **an older OCR**: receipt 3's lines renumbered (every line id + 1, so
  its lines, words, letters and labels sit under other keys, most of them keys the source uses
  for other content), one receipt word with another text (and at ``SUCCESS``), a label with
  another validation status, a label the source no longer has, a label prod lacks, an extra
  receipt (``RECEIPT#00004``, a copy of receipt 2) and its IMAGE item counting 4 receipts;
  unchanged receipt lines and words of receipts 1 and 2 at ``SUCCESS`` (they must stay so);
  items of types the tool does not write (``COMPACTION_RUN`` under receipt 1 and under the extra
  receipt, ``RECEIPT_SUMMARY``), which nothing may touch;
* ``P`` (:data:`IMG_P`), **protected** (``--protect``): prod differs from the source, and stays;
* ``G`` (:data:`IMG_G`), **gone**: in prod, not in the source, listed in ``--delete-image-ids``;
  its items of the written kinds are deleted, its ``RECEIPT_SECTION`` item stays;
* ``N`` (:data:`IMG_N`), **new**: in the source only;
* ``U`` (:data:`IMG_U`), **unchanged**: prod holds exactly the source's items.

:func:`mirror_oracle` computes, on its own, what the table must hold after the mirror and each
image's action (the report's ``actions``), from prod's items and the source's expected items:
an item equal but for prod's own embedding fields (``embedding_status``, ``GSI1PK`` of receipt
lines and words) is left as prod has it; any other difference is written as the source has it.
The stream helpers turn two scans into the INSERT/MODIFY/REMOVE records a run must leave.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cli import live_args
from exports import copy_golden
from fault_proxy import FaultProxy
from items import (
    IMG_LEGACY,
    IMG_META_AND_PLACE,
    IMG_PLACE_EMPTY_ID,
    IMG_ROUNDING,
    IMG_VERBATIM,
    TYPE_OF_LIST,
    Item,
    Key,
    canonical_item,
    item_key,
    load_expected,
    put_items,
    record_key,
    stream_records,
)
from servers import REGION

IMG_A = IMG_ROUNDING          # the older OCR (3 receipts in the source, 4 in prod)
IMG_P = IMG_VERBATIM          # protected
IMG_G = IMG_LEGACY            # gone from the source
IMG_N = IMG_META_AND_PLACE    # new
IMG_U = IMG_PLACE_EMPTY_ID    # unchanged
SOURCE_IDS = (IMG_A, IMG_N, IMG_U, IMG_P)

#: The item types this tool writes (the 14 kinds of the export).
WRITTEN_TYPES = frozenset(TYPE_OF_LIST.values())
#: Fields that are prod's own state: a difference in them only is no difference.
PROD_OWNED = {"RECEIPT_LINE": frozenset({"embedding_status", "GSI1PK"}),
              "RECEIPT_WORD": frozenset({"embedding_status", "GSI1PK"})}
EMBEDDED = ("RECEIPT_LINE", "RECEIPT_WORD")

COMPACTION_RUN_1 = "9d4c1f0e-6b7a-4c2d-8e3f-0a1b2c3d4e5f"
COMPACTION_RUN_4 = "1e2d3c4b-5a69-4788-9a0b-c1d2e3f4a5b6"

Action = dict[str, Any]


# --------------------------------------------------------------------------- item helpers


def pk(image_id: str) -> str:
    return f"IMAGE#{image_id}"


def of_image(items: Mapping[Key, Item], image_id: str) -> dict[Key, Item]:
    return {k: v for k, v in items.items() if k[0] == pk(image_id)}


def type_of(item: Mapping[str, Any]) -> str:
    return str(item["TYPE"]["S"])


def with_status(item: Item, status: str) -> Item:
    """A receipt line or word with its embedding status (and its index key) set."""
    assert type_of(item) in EMBEDDED, item_key(item)
    return {**item, "embedding_status": {"S": status}, "GSI1PK": {"S": f"EMBEDDING_STATUS#{status}"}}


def status_of(item: Mapping[str, Any]) -> str:
    return str(item["embedding_status"]["S"])


def equal_but_progress(prod: Item, source: Item) -> bool:
    """Equal once prod's own embedding fields are set aside (numbers compared as decimals)."""
    owned = PROD_OWNED.get(type_of(source), frozenset())
    a = {k: v for k, v in canonical_item(prod).items() if k not in owned}
    b = {k: v for k, v in canonical_item(source).items() if k not in owned}
    return a == b


def rewrite_keys(item: Item, fn: Any) -> Item:
    """The item with ``fn`` applied to its SK and its GSI keys' strings (what identifies it)."""
    out = dict(item)
    for name, value in item.items():
        if (name == "SK" or name.startswith("GSI")) and "S" in value:
            out[name] = {"S": fn(value["S"])}
    return out


LINE_ID = re.compile(r"(2_LINE#|3_WORD#|4_LABEL#|LINE#)(\d{5})")


def shift_lines(item: Item, shift: int) -> Item:
    """The item of an OCR that numbered the lines ``shift`` higher: every line id in its keys
    (SK, ``LINE#``, GSI4's ``2_LINE#``/``3_WORD#``/``4_LABEL#``) moved."""
    def move(text: str) -> str:
        return LINE_ID.sub(lambda m: f"{m.group(1)}{int(m.group(2)) + shift:05d}", text)

    return rewrite_keys(item, move)


def as_receipt(item: Item, old: int, new: int) -> Item:
    """The item of receipt ``old`` filed under receipt ``new``."""
    out = rewrite_keys(item, lambda s: s.replace(f"RECEIPT#{old:05d}", f"RECEIPT#{new:05d}"))
    if "receipt_id" in out:
        out["receipt_id"] = {"N": str(new)}
    return out


def other_item(image_id: str, sk: str, kind: str, **fields: str) -> Item:
    """An item of a type this tool does not write."""
    return {"PK": {"S": pk(image_id)}, "SK": {"S": sk}, "TYPE": {"S": kind},
            **{name: {"S": value} for name, value in fields.items()}}


# --------------------------------------------------------------------------- the scenario


@dataclass
class Scenario:
    """Everything a test needs to run the mirror and judge the table."""

    export_dir: Path
    protect_file: Path
    delete_ids_file: Path
    source: dict[Key, Item]            # the items the source's images become (golden expected)
    prod: dict[Key, Item]              # what was put into prod
    expected: dict[Key, Item]          # the table after the mirror
    actions: dict[str, Action]         # image id -> the report's action record
    prod_progress: int                 # source items equal but for prod's embedding fields
    kept_success: set[Key]             # lines/words at SUCCESS that are equal: stay SUCCESS
    changed_word: Key                  # a word at SUCCESS whose text changed: written NONE
    others: dict[Key, Item]            # items of types this tool does not write
    other_types: Counter[str] = field(default_factory=Counter)  # the report's prod_other_types

    def args(self, table: str, url: str, *extra: str, live: bool = True) -> list[str]:
        """The mirror's command line: --mirror --delete-missing --delete-image-ids --protect."""
        args = live_args(table, url, self.export_dir, "--mirror", "--delete-missing",
                         "--delete-image-ids", str(self.delete_ids_file), "--protect",
                         str(self.protect_file), *extra)
        return args if live else [a for a in args if a not in ("--no-dry-run", "--yes")]

    def to_delete(self) -> set[Key]:
        return set(self.prod) - set(self.expected)

    def to_put(self) -> set[Key]:
        return {k for k, v in self.expected.items()
                if k not in self.prod or canonical_item(self.prod[k]) != canonical_item(v)}


def undo_args(table: str, url: str, journal: Path, *extra: str, live: bool = True) -> list[str]:
    """An undo of ``journal`` on ``table``: dry run unless ``live``."""
    args = ["--undo", str(journal), "--table", table, "--endpoint-url", url, "--region", REGION,
            "--no-progress", *extra]
    return ["--no-dry-run", "--yes", *args] if live else args


def older_ocr_of_a(source: Mapping[Key, Item]) -> tuple[dict[Key, Item], set[Key], Key]:
    """Image A as an older OCR left it in prod; with the keys of its equal lines/words put at
    SUCCESS and the key of the changed word."""
    own = of_image(source, IMG_A)
    items = sorted(own.values(), key=item_key)

    def sk(item: Item) -> str:
        return str(item["SK"]["S"])

    prod: dict[Key, Item] = {}
    for item in items:
        if sk(item).startswith("RECEIPT#00003#LINE#"):
            moved = shift_lines(item, 1)  # receipt 3 renumbered
            prod[item_key(moved)] = moved
        else:
            prod[item_key(item)] = item
    for item in items:  # an extra receipt the new OCR does not find
        if sk(item).startswith("RECEIPT#00002"):
            extra = as_receipt(item, 2, 4)
            prod[item_key(extra)] = extra
    image = (pk(IMG_A), "IMAGE")
    prod[image] = {**prod[image], "receipt_count": {"N": "4"}, "GSI3SK": {"S": "NUM_RECEIPTS#00004"}}

    r1 = "RECEIPT#00001#LINE#"
    changed_word = (pk(IMG_A), f"{r1}00005#WORD#00001")
    assert changed_word in prod
    prod[changed_word] = with_status({**prod[changed_word], "text": {"S": "OLD-OCR-TEXT"}}, "SUCCESS")

    date = (pk(IMG_A), f"{r1}00004#WORD#00001#LABEL#DATE")     # another validation status
    prod[date] = {**prod[date], "validation_status": {"S": "INVALID"},
                  "GSI3PK": {"S": "VALIDATION_STATUS#INVALID"}}
    product = prod[(pk(IMG_A), f"{r1}00006#WORD#00002#LABEL#PRODUCT_NAME")]  # a label since dropped
    dropped = rewrite_keys(product, lambda s: s.replace("PRODUCT_NAME", "UNIT_PRICE"))
    prod[item_key(dropped)] = dropped
    del prod[(pk(IMG_A), f"{r1}00010#WORD#00001#LABEL#PAYMENT_METHOD")]  # a label prod lacks

    success: set[Key] = set()
    for key, item in sorted(prod.items()):  # embedded, unchanged: receipts 1 and 2, lines 1-3
        m = re.fullmatch(r"RECEIPT#0000[12]#LINE#0000([123])(#WORD#\d{5})?", key[1])
        if m and type_of(item) in EMBEDDED and key != changed_word:
            prod[key] = with_status(item, "SUCCESS")
            success.add(key)
    assert len(success) > 10 and all(equal_but_progress(prod[k], source[k]) for k in success)
    return prod, success, changed_word


def build_scenario(dst: Path, client: Any, table: str) -> Scenario:
    """Write the source (``dst/export``) and the id files, put prod's items into ``table``;
    return the scenario with what the mirror must make of it."""
    source = load_expected([IMG_A, IMG_N, IMG_U, IMG_P])
    export_dir = dst / "export"
    copy_golden(export_dir, SOURCE_IDS)
    protect_file = dst / "protect.txt"
    protect_file.write_text(f"{IMG_P}\n", encoding="utf-8")
    delete_ids_file = dst / "delete-ids.txt"
    delete_ids_file.write_text(f"{IMG_G}\n", encoding="utf-8")

    prod_a, success, changed_word = older_ocr_of_a(source)

    prod_p = of_image(source, IMG_P)  # protected, and prod differs from the source
    word = min(k for k, v in prod_p.items() if type_of(v) == "RECEIPT_WORD")
    prod_p[word] = {**prod_p[word], "text": {"S": "KEPT-AS-PROD-HAS-IT"}}
    del prod_p[min(k for k, v in prod_p.items() if type_of(v) == "RECEIPT_WORD_LABEL")]

    others = {item_key(i): i for i in (
        other_item(IMG_A, f"RECEIPT#00001#COMPACTION_RUN#{COMPACTION_RUN_1}", "COMPACTION_RUN",
                   run_id=COMPACTION_RUN_1, lines_state="COMPLETED", words_state="COMPLETED"),
        other_item(IMG_A, f"RECEIPT#00004#COMPACTION_RUN#{COMPACTION_RUN_4}", "COMPACTION_RUN",
                   run_id=COMPACTION_RUN_4, lines_state="PENDING", words_state="PENDING"),
        other_item(IMG_A, "RECEIPT#00001#SUMMARY", "RECEIPT_SUMMARY", merchant="TRADER JOE'S"),
        other_item(IMG_G, "RECEIPT#00001#SECTION#HEADER", "RECEIPT_SECTION", section="HEADER"),
    )}

    prod = {**prod_a, **prod_p, **load_expected([IMG_G]), **of_image(source, IMG_U), **others}
    put_items(client, table, prod.values())

    expected, actions, progress = mirror_oracle(prod, source, protected={IMG_P}, deleted={IMG_G})
    # the scenario is what it says it is
    assert actions[IMG_A]["action"] == "UPDATE" and actions[IMG_A]["put"] and actions[IMG_A]["delete"]
    assert actions[IMG_N]["action"] == "ADD" and actions[IMG_U]["action"] == "UNCHANGED"
    assert actions[IMG_G]["action"] == "DELETE" and actions[IMG_P]["action"] == "PROTECTED"
    assert all(status_of(expected[k]) == "SUCCESS" for k in success)
    assert status_of(expected[changed_word]) == "NONE"
    other_types = Counter(type_of(i) for i in others.values())
    return Scenario(export_dir=export_dir, protect_file=protect_file, delete_ids_file=delete_ids_file,
                    source=source, prod=prod, expected=expected, actions=actions, prod_progress=progress,
                    kept_success=success, changed_word=changed_word, others=others,
                    other_types=other_types)


# --------------------------------------------------------------------------- the oracle


def mirror_oracle(prod: Mapping[Key, Item], source: Mapping[Key, Item], *, protected: set[str],
                  deleted: set[str]) -> tuple[dict[Key, Item], dict[str, Action], int]:
    """What the table holds after the mirror, each image's action, and how many source items
    are kept because they differ only in prod's embedding fields."""
    final = dict(prod)
    actions: dict[str, Action] = {}
    progress = 0
    source_ids = sorted({k[0][len("IMAGE#"):] for k in source})
    for image_id in source_ids:
        theirs = of_image(source, image_id)
        ours = of_image(prod, image_id)
        if not ours:
            final.update(theirs)
            actions[image_id] = {"image_id": image_id, "action": "ADD", "put": len(theirs), "delete": 0,
                                 "unchanged": 0}
            continue
        if image_id in protected:
            actions[image_id] = {"image_id": image_id, "action": "PROTECTED", "put": 0, "delete": 0,
                                 "unchanged": 0}
            continue
        put = unchanged = 0
        for key, item in theirs.items():
            old = ours.get(key)
            if old is not None and equal_but_progress(old, item):
                unchanged += 1
                progress += canonical_item(old) != canonical_item(item)
            else:
                final[key] = item
                put += 1
        gone = [k for k, v in ours.items() if k not in theirs and type_of(v) in WRITTEN_TYPES]
        for key in gone:
            del final[key]
        actions[image_id] = {"image_id": image_id, "action": "UPDATE" if put or gone else "UNCHANGED",
                             "put": put, "delete": len(gone), "unchanged": unchanged}
    for image_id in sorted(deleted):
        gone = [k for k, v in of_image(prod, image_id).items() if type_of(v) in WRITTEN_TYPES]
        for key in gone:
            del final[key]
        actions[image_id] = {"image_id": image_id, "action": "DELETE", "put": 0, "delete": len(gone),
                             "unchanged": 0}
    return final, actions, progress


def action_line(action: Mapping[str, Any]) -> str:
    """The line the run prints for an image: ``UPDATE    <id>: put 12, delete 9, unchanged 300``
    (a count of 0 is left out)."""
    counts = ", ".join(f"{what} {action[what]:,}" for what in ("put", "delete", "unchanged") if action[what])
    return f"{action['action']:<9} {action['image_id']}" + (f": {counts}" if counts else "")


# --------------------------------------------------------------------------- streams and requests


def expected_events(before: Mapping[Key, Item], after: Mapping[Key, Item]) -> dict[Key, str]:
    """The one stream record per key that turns ``before`` into ``after``: INSERT for a new key,
    REMOVE for a gone one, MODIFY for a changed item; nothing for an equal one."""
    events = {k: "INSERT" for k in set(after) - set(before)}
    events.update({k: "REMOVE" for k in set(before) - set(after)})
    events.update({k: "MODIFY" for k in set(before) & set(after)
                   if canonical_item(before[k]) != canonical_item(after[k])})
    return events


def sequence_numbers(records: Iterable[Mapping[str, Any]]) -> set[str]:
    return {str(r["dynamodb"]["SequenceNumber"]) for r in records}


def new_records(url: str, client: Any, table: str, seen: set[str]) -> list[dict[str, Any]]:
    """The table's stream records whose sequence numbers are not in ``seen``."""
    return [r for r in stream_records(url, client, table) if r["dynamodb"]["SequenceNumber"] not in seen]


def events_by_key(records: Sequence[Mapping[str, Any]]) -> dict[Key, list[str]]:
    out: dict[Key, list[str]] = {}
    for record in records:
        out.setdefault(record_key(record), []).append(str(record["eventName"]))
    return out


def sent_writes(proxy: FaultProxy) -> Counter[Key]:
    """How often each key was sent in a write request (any write operation, resends counted)."""
    sent: Counter[Key] = Counter()
    for operation, body in proxy.requests:
        if operation == "BatchWriteItem":
            for requests in body["RequestItems"].values():
                for request in requests:
                    spec = request.get("PutRequest", {}).get("Item") or request["DeleteRequest"]["Key"]
                    sent[item_key(spec)] += 1
        elif operation in ("PutItem",):
            sent[item_key(body["Item"])] += 1
        elif operation in ("DeleteItem", "UpdateItem"):
            sent[item_key(body["Key"])] += 1
        elif operation == "TransactWriteItems":
            for entry in body["TransactItems"]:
                ((_, spec),) = entry.items()
                sent[item_key(spec.get("Item") or spec["Key"])] += 1
    return sent
