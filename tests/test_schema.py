"""Item layout, in process: export entities -> prod items, per ITEMS.md and the golden vectors.

Everything goes through ``plan_image`` (the function that turns one parsed export file into
its items), with the migration settings the golden vectors were generated with. Each test
changes a golden export a little and checks the attributes the change must affect; where a
whole image is rebuilt, every item is compared exactly with the (adjusted) golden items.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
from cli import CDN_BUCKETS, RAW_BUCKETS
from exports import drop_fields, load_export
from items import (
    GOLDEN_IDS,
    IMG_LEGACY,
    IMG_META_AND_PLACE,
    IMG_PLACE_EMPTY_ID,
    IMG_VERBATIM,
    Item,
    Key,
    assert_items_equal,
    by_key,
    entity_counts,
    expected_without_types,
    load_expected,
)

import copy_dynamodb_dev_to_prod as tool

RULES = tool.Rules(RAW_BUCKETS, CDN_BUCKETS)
NULL = {"NULL": True}
IMG = IMG_VERBATIM  # the default image of the small tests
PK = f"IMAGE#{IMG}"


# --------------------------------------------------------------------------- helpers


def plan(data: dict[str, Any], *, ignore_unknown: bool = False, rules: tool.Rules = RULES,
         name: str | None = None) -> tool.ConvertedImage:
    image_id = data["images"][0]["image_id"]
    source = tool.ImageSource.from_file(Path(name or f"{image_id}.json"))
    return tool.convert_image(source, tool.ExportImage(data), rules, ignore_unknown)


def items(data: dict[str, Any], **kwargs: Any) -> dict[Key, Item]:
    return by_key(plan(data, **kwargs).items)


def fails(data: dict[str, Any], **kwargs: Any) -> tool.InputError:
    with pytest.raises(tool.InputError) as info:
        plan(data, **kwargs)
    return info.value


def one(data: dict[str, Any], sk: str, **kwargs: Any) -> Item:
    """The item with this SK in the image's partition."""
    image_id = data["images"][0]["image_id"]
    return items(data, **kwargs)[(f"IMAGE#{image_id}", sk)]


def edited(kind: str, index: int = 0, /, image_id: str = IMG, **values: Any) -> dict[str, Any]:
    data = load_export(image_id)
    data[kind][index].update(values)
    return data


def sk_of(kind: str, e: dict[str, Any]) -> str:
    """The SK of an export entry (ITEMS.md §4)."""
    r = f"RECEIPT#{e.get('receipt_id') or 0:05d}"
    lw = f"LINE#{e.get('line_id') or 0:05d}#WORD#{e.get('word_id') or 0:05d}"
    return {
        "images": lambda: "IMAGE",
        "lines": lambda: f"LINE#{e['line_id']:05d}",
        "words": lambda: lw,
        "letters": lambda: f"{lw}#LETTER#{e['letter_id']:05d}",
        "receipts": lambda: r,
        "receipt_lines": lambda: f"{r}#LINE#{e['line_id']:05d}",
        "receipt_words": lambda: f"{r}#{lw}",
        "receipt_letters": lambda: f"{r}#{lw}#LETTER#{e['letter_id']:05d}",
        "receipt_word_labels": lambda: f"{r}#{lw}#LABEL#{e['label'].upper()}",
        "receipt_places": lambda: f"{r}#PLACE",
        "receipt_metadatas": lambda: f"{r}#METADATA",
        "receipt_barcodes": lambda: f"{r}#BARCODE#{e['barcode_id']:05d}",
        "ocr_jobs": lambda: f"OCR_JOB#{e['job_id']}",
        "ocr_routing_decisions": lambda: f"ROUTING#{e['job_id']}",
    }[kind]()


def entity_item(kind: str, index: int = 0, /, image_id: str = IMG, **values: Any) -> Item:
    """Change one entry of a golden export and return the item it becomes."""
    data = edited(kind, index, image_id, **values)
    return one(data, sk_of(kind, data[kind][index]))


def entity_error(kind: str, index: int = 0, /, image_id: str = IMG, **values: Any) -> tool.InputError:
    err = fails(edited(kind, index, image_id, **values))
    assert (err.entity, err.index) == (kind, index), (err.entity, err.index, err.message)
    return err


# --------------------------------------------------------------------------- golden fidelity


@pytest.mark.parametrize("image_id", GOLDEN_IDS)
def test_golden_image_items_exact(image_id: str) -> None:
    p = plan(load_export(image_id))
    assert len(p.items) == len(by_key(p.items))  # no key twice
    expected = load_expected([image_id])
    assert_items_equal(by_key(p.items), expected)
    assert dict(p.entities) == entity_counts(expected.values())
    assert not p.excluded and not p.ignored
    assert p.image_id == image_id and p.has_receipts


def test_golden_plan_does_not_modify_its_input() -> None:
    data = load_export(IMG_LEGACY)
    before = copy.deepcopy(data)
    plan(data)
    assert data == before


def test_golden_totals_by_type() -> None:
    counts: dict[str, int] = {}
    for image_id in GOLDEN_IDS:
        for item in plan(load_export(image_id)).items:
            counts[item["TYPE"]["S"]] = counts.get(item["TYPE"]["S"], 0) + 1
    assert counts == {"IMAGE": 5, "LINE": 81, "WORD": 91, "LETTER": 40, "RECEIPT": 8,
                      "RECEIPT_LINE": 81, "RECEIPT_WORD": 205, "RECEIPT_LETTER": 87,
                      "RECEIPT_WORD_LABEL": 130, "RECEIPT_PLACE": 7, "RECEIPT_METADATA": 2,
                      "RECEIPT_BARCODE": 7, "OCR_JOB": 7, "OCR_ROUTING_DECISION": 5}


# --------------------------------------------------------------------------- number formats (§3)


@pytest.mark.parametrize("value,text", [
    (0.985, "0.99"), (0.125, "0.13"), (0.995, "1.00"), (1, "1.00"), (1.0, "1.00"),
    (0.015, "0.02"), (0.045, "0.05"), (0.005, "0.01"), (0.004, "0.00"), (0.5, "0.50"),
])
def test_confidence_f2_decimal_half_up(value: float, text: str) -> None:
    assert entity_item("lines", confidence=value)["confidence"] == {"N": text}
    assert entity_item("receipt_words", 3, confidence=value)["confidence"] == {"N": text}


@pytest.mark.parametrize("value,text", [
    (5e-05, "0.00005000000000000000"),
    (0.30000000000000004, "0.30000000000000004000"),
    (0.3, "0.30000000000000000000"),
    (1, "1.00000000000000000000"),
    (0, "0.00000000000000000000"),
    (1e-21, "0.00000000000000000000"),
    (-1e-21, "-0.00000000000000000000"),
    (-0.0001, "-0.00010000000000000000"),
    (0.123456789012345678901, "0.12345678901234568000"),
    (99999999.5, "99999999.50000000000000000000"),
])
def test_geometry_f20(value: float, text: str) -> None:
    box = {"x": value, "y": 0.25, "width": 0.5, "height": 0.018}
    item = entity_item("words", 2, bounding_box=box, top_right={"x": 0.5, "y": value})
    assert item["bounding_box"]["M"]["x"] == {"N": text}
    assert item["bounding_box"]["M"]["y"] == {"N": "0.25000000000000000000"}
    assert item["top_right"]["M"]["y"] == {"N": text}


@pytest.mark.parametrize("value,text", [
    (-0.0001, "-0.000100000000000000"),
    (-1e-19, "-0.000000000000000000"),
    (1e-18, "0.000000000000000001"),
    (5e-19, "0.000000000000000001"),
    (-1.3779740315856839, "-1.377974031585683900"),
    (45, "45.000000000000000000"),
    (9999999999.0, "9999999999.000000000000000000"),
])
def test_angles_f18(value: float, text: str) -> None:
    item = entity_item("receipt_lines", 1, angle_degrees=value, angle_radians=value)
    assert item["angle_degrees"] == {"N": text}
    assert item["angle_radians"] == {"N": text}


def test_receipt_corners_are_f18_not_f20() -> None:
    item = entity_item("receipts", top_left={"x": 0.1, "y": 5e-05})
    assert item["top_left"] == {"M": {"x": {"N": "0.100000000000000000"},
                                      "y": {"N": "0.000050000000000000"}}}


@pytest.mark.parametrize("kind,field,value", [
    ("lines", "bounding_box", {"x": 1e8, "y": 0, "width": 1, "height": 1}),
    ("words", "top_left", {"x": 0.1, "y": -1e8}),
    ("letters", "angle_degrees", 1e10),
    ("receipt_lines", "angle_radians", -1e10),
    ("receipts", "top_right", {"x": 1e10, "y": 0.5}),
])
def test_numbers_too_large_for_fixed_point_raise(kind: str, field: str, value: Any) -> None:
    err = entity_error(kind, **{field: value})
    assert err.field == field


@pytest.mark.parametrize("value", [float("nan"), float("inf"), "0.5", True, None])
def test_geometry_numbers_must_be_finite_numbers(value: Any) -> None:
    err = entity_error("lines", bounding_box={"x": value, "y": 0, "width": 1, "height": 1})
    assert err.field == "bounding_box"
    assert entity_error("lines", angle_degrees=value).field == "angle_degrees"


@pytest.mark.parametrize("value,text", [
    (1, "1.0"), (0, "0.0"), (0.95, "0.95"), (0.12125, "0.12125"), (1e-05, "1e-05"),
])
def test_place_confidence_is_float_repr(value: float, text: str) -> None:
    assert entity_item("receipt_places", confidence=value)["confidence"] == {"N": text}


@pytest.mark.parametrize("value,text", [
    (34, "34.0"), (-18.7986, "-18.7986"), (1e-05, "1e-05"), (0, "0.0"), (90, "90.0"),
    (-18.79729999999999, "-18.79729999999999"),
])
def test_place_coordinates_are_float_repr(value: float, text: str) -> None:
    item = entity_item("receipt_places", latitude=value, longitude=value, viewport_sw_lng=value)
    assert item["latitude"] == item["longitude"] == item["viewport_sw_lng"] == {"N": text}


def test_ocr_job_numbers_are_float_repr() -> None:
    item = entity_item("ocr_jobs", image_id=IMG_LEGACY, reocr_region={"x": 0, "y": 1, "width": 0.5,
                                                                      "height": 1e-05},
                       reocr_delta_before=6, reocr_delta_after=0.1,
                       refine_summary={"subtotal": 10, "tax": None, "grand_total": 10.5})
    assert item["reocr_region"] == {"M": {"x": {"N": "0.0"}, "y": {"N": "1.0"}, "width": {"N": "0.5"},
                                          "height": {"N": "1e-05"}}}
    assert item["reocr_delta_before"] == {"N": "6.0"}
    assert item["reocr_delta_after"] == {"N": "0.1"}
    assert item["refine_summary"] == {"M": {"subtotal": {"N": "10.0"}, "tax": NULL,
                                            "grand_total": {"N": "10.5"}}}


# --------------------------------------------------------------------------- NULL policies T, N, O


@pytest.mark.parametrize("value,want", [("", NULL), (None, NULL), ("abc", {"S": "abc"})])
def test_policy_t_truthy_or_null(value: Any, want: dict[str, Any]) -> None:
    assert entity_item("images", sha256=value)["sha256"] == want
    assert entity_item("receipts", cdn_medium_webp_s3_key=value)["cdn_medium_webp_s3_key"] == want
    assert entity_item("receipt_places", merchant_category=value)["merchant_category"] == want
    assert entity_item("receipt_places", website=value)["website"] == want
    meta = entity_item("receipt_metadatas", image_id=IMG_LEGACY, address=value, reasoning=value)
    assert meta["address"] == want and meta["reasoning"] == want


def test_policy_t_cdn_bucket_and_places_api_version() -> None:
    assert entity_item("images", cdn_s3_bucket="")["cdn_s3_bucket"] == NULL
    assert entity_item("receipts", cdn_s3_bucket=None)["cdn_s3_bucket"] == NULL
    assert entity_item("receipt_places", places_api_version="")["places_api_version"] == NULL


def test_policy_n_none_is_null_and_empty_string_stays() -> None:
    label = entity_item("receipt_word_labels", reasoning=None, label_proposed_by=None,
                        label_consolidated_from=None)
    assert label["reasoning"] == NULL
    assert label["label_proposed_by"] == NULL and label["label_consolidated_from"] == NULL
    job = entity_item("ocr_jobs", reocr_reason="", refine_merchant_name="", updated_at=None)
    assert job["reocr_reason"] == {"S": ""}
    assert job["refine_merchant_name"] == {"S": ""}
    assert job["updated_at"] == NULL
    assert entity_item("ocr_routing_decisions", updated_at=None)["updated_at"] == NULL


@pytest.mark.parametrize("field", ["reasoning", "label_proposed_by", "label_consolidated_from"])
def test_policy_n_label_rejects_empty_string(field: str) -> None:
    assert entity_error("receipt_word_labels", 1, **{field: ""}).field == field


def test_policy_n_ocr_mechanism_rejects_empty_string() -> None:
    assert entity_error("ocr_jobs", reocr_mechanism="").field == "reocr_mechanism"


def test_policy_o_place_omits_empty_and_none() -> None:
    item = entity_item("receipt_places", merchant_types=[], matched_fields=[], hours_summary=[],
                       photo_references=[], latitude=None, longitude=None, viewport_ne_lat=None,
                       viewport_ne_lng=None, viewport_sw_lat=None, viewport_sw_lng=None,
                       open_now=None, address_components={}, hours_data={})
    for name in ("merchant_types", "matched_fields", "hours_summary", "photo_references", "latitude",
                 "longitude", "viewport_ne_lat", "viewport_ne_lng", "viewport_sw_lat",
                 "viewport_sw_lng", "open_now", "address_components", "hours_data"):
        assert name not in item, name


def test_place_lists_dedupe_keep_first_and_open_now_false_is_written() -> None:
    item = entity_item("receipt_places", merchant_types=["store", "food", "store", "food"],
                       open_now=False)
    assert item["merchant_types"] == {"L": [{"S": "store"}, {"S": "food"}]}
    assert item["open_now"] == {"BOOL": False}
    assert entity_error("receipt_places", merchant_types=["store", " "]).field == "merchant_types"


def test_place_generic_maps_keep_int_float_and_empty_strings() -> None:
    item = entity_item("receipt_places", hours_data={"day": 1, "rating": 4.0, "note": "", "open": True,
                                                     "periods": [{"close": None}], "x": -0.5})
    assert item["hours_data"] == {"M": {
        "day": {"N": "1"}, "rating": {"N": "4.0"}, "note": {"S": ""}, "open": {"BOOL": True},
        "periods": {"L": [{"M": {"close": NULL}}]}, "x": {"N": "-0.5"}}}


def test_policy_o_metadata_matched_fields() -> None:
    item = entity_item("receipt_metadatas", image_id=IMG_LEGACY, matched_fields=[])
    assert "matched_fields" not in item
    item = entity_item("receipt_metadatas", image_id=IMG_LEGACY, matched_fields=["phone", "name", "address"])
    assert item["matched_fields"] == {"SS": ["phone", "name", "address"]}  # list order, not sorted
    assert entity_error("receipt_metadatas", image_id=IMG_LEGACY,
                        matched_fields=["name", "name"]).field == "matched_fields"


# --------------------------------------------------------------------------- datetimes


@pytest.mark.parametrize("text", [
    "2025-07-15T18:28:29Z", "2025-06-02 17:36:41", "2025-06-02", "2025-06-02T17:36:41.123+02:00",
    "2025-09-01T12:34:56.789Z", "2025-06-02T17:36:41.123456",
])
def test_string_typed_timestamps_kept_verbatim(text: str) -> None:
    assert entity_item("images", timestamp_added=text)["timestamp_added"] == {"S": text}
    assert entity_item("receipts", timestamp_added=text)["timestamp_added"] == {"S": text}
    assert entity_item("receipt_word_labels", 3, timestamp_added=text)["timestamp_added"] == {"S": text}


@pytest.mark.parametrize("text", ["yesterday", "2025-13-01T00:00:00", "", "15/07/2025"])
def test_string_typed_timestamps_must_parse(text: str) -> None:
    assert entity_error("receipts", timestamp_added=text).field == "timestamp_added"


@pytest.mark.parametrize("text,want", [
    ("2025-07-15T21:32:29Z", "2025-07-15T21:32:29+00:00"),
    ("2025-07-15T21:32:29.500000Z", "2025-07-15T21:32:29.500000+00:00"),
    ("2025-07-15 21:32:29", "2025-07-15T21:32:29"),
    ("2025-07-15T21:32:29+00:00", "2025-07-15T21:32:29+00:00"),
    ("2025-07-15T21:32:29.428244", "2025-07-15T21:32:29.428244"),
])
def test_datetime_typed_fields_are_reisoformatted(text: str, want: str) -> None:
    assert entity_item("receipt_places", timestamp=text)["timestamp"] == {"S": want}
    assert entity_item("receipt_metadatas", image_id=IMG_LEGACY, timestamp=text)["timestamp"] == {"S": want}
    job = entity_item("ocr_jobs", created_at=text, updated_at=text)
    assert job["created_at"] == {"S": want} and job["updated_at"] == {"S": want}
    decision = entity_item("ocr_routing_decisions", created_at=text, updated_at=text)
    assert decision["created_at"] == {"S": want} and decision["updated_at"] == {"S": want}


def test_date_like_free_text_is_not_parsed() -> None:
    word = entity_item("words", 1, text="2024-01-15T10:30:00",
                       extracted_data={"type": "date", "value": "2024-01-15T10:30:00Z"})
    assert word["text"] == {"S": "2024-01-15T10:30:00"}
    assert word["extracted_data"]["M"]["value"] == {"S": "2024-01-15T10:30:00Z"}
    rword = entity_item("receipt_words", 2, text="2024-01-15 10:30:00",
                        extracted_data={"type": "date", "value": "2024-01-15T10:30:00Z"})
    assert rword["text"] == {"S": "2024-01-15 10:30:00"}
    assert rword["extracted_data"] == {"M": {"type": {"S": "date"}, "value": {"S": "2024-01-15T10:30:00Z"}}}


# --------------------------------------------------------------------------- labels


def label_item(label: str, **values: Any) -> Item:
    return entity_item("receipt_word_labels", 2, label=label, **values)


def test_label_upper_and_padding() -> None:
    item = label_item("total")
    rw = f"IMAGE#{IMG}#RECEIPT#00001#LINE#00002#WORD#00002"
    assert item["SK"] == {"S": "RECEIPT#00001#LINE#00002#WORD#00002#LABEL#TOTAL"}
    assert item["GSI1PK"] == {"S": "LABEL#TOTAL" + "_" * 29}
    assert len(item["GSI1PK"]["S"]) == 40
    assert item["GSI1SK"] == {"S": rw}
    assert item["GSI2PK"] == {"S": "RECEIPT"} and item["GSI2SK"] == {"S": rw}
    assert item["GSI3SK"] == {"S": rw + "#LABEL#TOTAL"}
    assert item["GSI4PK"] == {"S": f"IMAGE#{IMG}#RECEIPT#00001"}
    assert item["GSI4SK"] == {"S": "4_LABEL#00002#00002#TOTAL"}
    for name in ("label", "image_id", "receipt_id", "line_id", "word_id"):
        assert name not in item


@pytest.mark.parametrize("length,key_length", [(33, 40), (34, 40), (35, 41), (50, 56)])
def test_label_padding_never_truncates(length: int, key_length: int) -> None:
    label = ("ABCDEFGHIJ" * 6)[:length]
    item = label_item(label)
    assert item["GSI1PK"]["S"] == "LABEL#" + label + "_" * max(0, 34 - length)
    assert len(item["GSI1PK"]["S"]) == key_length
    assert item["SK"]["S"].endswith("#LABEL#" + label)


def test_golden_35_character_label() -> None:
    label = "EXTENDED_WARRANTY_PROTECTION_PLAN_X"
    item = one(load_export(IMG), f"RECEIPT#00001#LINE#00005#WORD#00001#LABEL#{label}")
    assert item["GSI1PK"] == {"S": "LABEL#EXTENDED_WARRANTY_PROTECTION_PLAN_X"}


@pytest.mark.parametrize("label,upper", [("straße", "STRASSE"), ("über", "ÜBER"), ("ﬁnal", "FINAL")])
def test_label_full_unicode_upper_counted_in_code_points(label: str, upper: str) -> None:
    item = label_item(label)
    assert item["SK"]["S"].endswith("#LABEL#" + upper)
    assert item["GSI1PK"]["S"] == "LABEL#" + upper + "_" * (34 - len(upper))
    assert len(item["GSI1PK"]["S"]) == 40
    assert item["GSI4SK"]["S"].endswith("#" + upper)


@pytest.mark.parametrize("status,want", [
    (None, "NONE"), ("VALID", "VALID"), ("NEEDS_REVIEW", "NEEDS_REVIEW"), ("PENDING", "PENDING"),
])
def test_label_validation_status(status: str | None, want: str) -> None:
    item = label_item("TOTAL", validation_status=status)
    assert item["validation_status"] == {"S": want}
    assert item["GSI3PK"] == {"S": f"VALIDATION_STATUS#{want}"}


def test_label_missing_validation_status_defaults_to_none() -> None:
    data = load_export(IMG)
    del data["receipt_word_labels"][2]["validation_status"]
    item = one(data, sk_of("receipt_word_labels", data["receipt_word_labels"][2]))
    assert item["validation_status"] == {"S": "NONE"}
    assert item["GSI3PK"] == {"S": "VALIDATION_STATUS#NONE"}


@pytest.mark.parametrize("status", ["", "valid", "APPROVED"])
def test_label_validation_status_rejected(status: str) -> None:
    assert entity_error("receipt_word_labels", 2, validation_status=status).field == "validation_status"


@pytest.mark.parametrize("label", ["", "TOTAL#2", "#"])
def test_label_rejected(label: str) -> None:
    assert entity_error("receipt_word_labels", 2, label=label).field == "label"


# --------------------------------------------------------------------------- places and metadata


@pytest.mark.parametrize("name,slug", [
    ("Café & Co.", "CAF_CO"), ("すき家 Sukiya", "SUKIYA"), ("Trader Joe's", "TRADER_JOE_S"),
    ("  --7-Eleven--  ", "7_ELEVEN"), ("Sprouts Farmers Market", "SPROUTS_FARMERS_MARKET"),
    ("straße 1", "STRASSE_1"),
])
def test_place_merchant_slug(name: str, slug: str) -> None:
    item = entity_item("receipt_places", merchant_name=name)
    assert item["GSI1PK"] == {"S": f"MERCHANT#{slug}"}
    assert item["GSI1SK"] == {"S": f"IMAGE#{IMG}#RECEIPT#00001#PLACE"}
    assert item["merchant_name"] == {"S": name}


@pytest.mark.parametrize("name", ["すき家", "", "  ", "Éé", "--"])
def test_place_merchant_without_ascii_alnum_rejected(name: str) -> None:
    assert entity_error("receipt_places", merchant_name=name).field == "merchant_name"


def test_place_gsi2_only_with_place_id() -> None:
    item = entity_item("receipt_places", place_id="")
    assert "GSI2PK" not in item and "GSI2SK" not in item
    assert item["place_id"] == {"S": ""}
    item = entity_item("receipt_places", place_id="ChIJabc")
    assert item["GSI2PK"] == {"S": "PLACE#ChIJabc"}
    assert item["GSI2SK"] == {"S": f"IMAGE#{IMG}#RECEIPT#00001#PLACE"}


@pytest.mark.parametrize("confidence,text", [
    (0.12125, "0.1212"), (0.99995, "1.0000"), (0.69, "0.6900"), (1, "1.0000"), (0, "0.0000"),
])
def test_place_gsi3sk_binary_format(confidence: float, text: str) -> None:
    item = entity_item("receipt_places", confidence=confidence, validation_status="MATCHED")
    assert item["GSI3PK"] == {"S": "PLACE_VALIDATION"}
    assert item["GSI3SK"] == {"S": f"CONFIDENCE#{text}#STATUS#MATCHED#IMAGE#{IMG}"}


def test_place_empty_validation_status_in_gsi3sk() -> None:
    item = entity_item("receipt_places", validation_status="")
    assert item["validation_status"] == {"S": ""}
    assert "#STATUS##IMAGE#" in item["GSI3SK"]["S"]


def test_place_other_attributes() -> None:
    item = entity_item("receipt_places")
    assert item["image_id"] == {"S": IMG} and item["receipt_id"] == {"N": "1"}
    assert item["GSI4PK"] == {"S": f"IMAGE#{IMG}#RECEIPT#00001"} and item["GSI4SK"] == {"S": "1_PLACE"}


@pytest.mark.parametrize("field,value", [("latitude", 90.5), ("viewport_sw_lat", -91),
                                         ("longitude", 180.01), ("viewport_ne_lng", -181),
                                         ("confidence", 1.01), ("confidence", -0.1),
                                         ("validated_by", "GUESS")])
def test_place_values_rejected(field: str, value: Any) -> None:
    assert entity_error("receipt_places", **{field: value}).field == field


@pytest.mark.parametrize("merchant,canonical,key", [
    ("Café & Co.", "", "MERCHANT#CAFÉ_&_CO."),
    ("Trader Joe's", "", "MERCHANT#TRADER_JOE'S"),
    ("whatever", "Trader Joe's #12", "MERCHANT#TRADER_JOE'S_#12"),
    ("straße", None, "MERCHANT#STRASSE"),
])
def test_metadata_merchant_key_keeps_punctuation(merchant: str, canonical: str | None, key: str) -> None:
    item = entity_item("receipt_metadatas", image_id=IMG_LEGACY, merchant_name=merchant,
                       canonical_merchant_name=canonical)
    assert item["GSI1PK"] == {"S": key}
    assert item["GSI1SK"] == {"S": f"IMAGE#{IMG_LEGACY}#RECEIPT#00001#METADATA"}
    assert item["merchant_name"] == {"S": merchant}


def test_metadata_keys() -> None:
    item = entity_item("receipt_metadatas", image_id=IMG_LEGACY, place_id="", validation_status="UNSURE")
    assert "GSI2PK" not in item and "GSI2SK" not in item and "GSI4PK" not in item
    assert item["GSI3PK"] == {"S": "MERCHANT_VALIDATION"} and item["GSI3SK"] == {"S": "STATUS#UNSURE"}
    item = entity_item("receipt_metadatas", image_id=IMG_LEGACY, place_id="p1")
    assert item["GSI2PK"] == {"S": "PLACE#p1"}


@pytest.mark.parametrize("field,value", [("validated_by", ""), ("validated_by", "text_search"),
                                         ("validation_status", "MAYBE")])
def test_metadata_values_rejected(field: str, value: str) -> None:
    assert entity_error("receipt_metadatas", image_id=IMG_LEGACY, **{field: value}).field == field


# --------------------------------------------------------------------------- words, images


def test_word_extracted_data() -> None:
    assert entity_item("words", 1, extracted_data={})["extracted_data"] == NULL
    assert entity_item("words", 1, extracted_data=None)["extracted_data"] == NULL
    item = entity_item("words", 1, extracted_data={"type": "date", "value": "07/15/2025", "extra": 3})
    assert item["extracted_data"] == {"M": {"type": {"S": "date"}, "value": {"S": "07/15/2025"}}}
    assert entity_error("words", 1, extracted_data={"type": "date"}).field == "extracted_data"


def test_receipt_word_extracted_data() -> None:
    assert entity_item("receipt_words", 1, extracted_data={})["extracted_data"] == {"M": {}}
    assert entity_item("receipt_words", 1, extracted_data=None)["extracted_data"] == NULL
    item = entity_item("receipt_words", 1, extracted_data={"type": "qty", "value": 3, "unit": 1.5})
    assert item["extracted_data"] == {"M": {"type": {"S": "qty"}, "value": {"S": "3"}, "unit": {"S": "1.5"}}}


@pytest.mark.parametrize("count,attr,gsi3sk", [
    (None, NULL, "NUM_RECEIPTS#00000"), (0, {"N": "0"}, "NUM_RECEIPTS#00000"),
    (7, {"N": "7"}, "NUM_RECEIPTS#00007"), (123456, {"N": "123456"}, "NUM_RECEIPTS#123456"),
])
def test_image_receipt_count(count: int | None, attr: dict[str, Any], gsi3sk: str) -> None:
    item = entity_item("images", receipt_count=count)
    assert item["receipt_count"] == attr
    assert item["GSI3SK"] == {"S": gsi3sk}


@pytest.mark.parametrize("image_type", ["SCAN", "PHOTO", "NATIVE"])
def test_image_type_in_gsi3pk(image_type: str) -> None:
    item = entity_item("images", image_type=image_type)
    assert item["image_type"] == {"S": image_type} and item["GSI3PK"] == {"S": f"IMAGE#{image_type}"}


def test_image_keys() -> None:
    item = entity_item("images")
    assert (item["PK"], item["SK"]) == ({"S": PK}, {"S": "IMAGE"})
    assert item["GSI1PK"] == item["GSI2PK"] == {"S": PK}
    assert item["GSI1SK"] == item["GSI2SK"] == {"S": "IMAGE"}
    assert "image_id" not in item


def test_ids_are_at_least_five_digits_never_truncated() -> None:
    item = entity_item("lines", line_id=123456)
    assert item["SK"] == {"S": "LINE#123456"}
    assert item["GSI1SK"] == {"S": "LINE#123456"}


# --------------------------------------------------------------------------- export eras (§2)


def test_era_without_receipt_barcodes() -> None:
    data = load_export(IMG)
    del data["receipt_barcodes"]
    assert_items_equal(items(data), expected_without_types(load_expected([IMG]), "RECEIPT_BARCODE"))


def test_era_receipt_metadatas_instead_of_places() -> None:
    data = load_export(IMG_META_AND_PLACE)
    del data["receipt_places"], data["receipt_barcodes"]
    assert_items_equal(items(data), expected_without_types(load_expected([IMG_META_AND_PLACE]),
                                                           "RECEIPT_PLACE", "RECEIPT_BARCODE"))
    assert list(load_export(IMG_LEGACY)) == [  # the golden 2025 key set
        "images", "lines", "words", "letters", "receipts", "receipt_lines", "receipt_words",
        "receipt_letters", "receipt_word_labels", "receipt_metadatas", "ocr_jobs", "ocr_routing_decisions"]


def test_era_without_receipt_word_labels() -> None:
    data = load_export(IMG_LEGACY)
    del data["receipt_word_labels"]
    assert_items_equal(items(data), expected_without_types(load_expected([IMG_LEGACY]), "RECEIPT_WORD_LABEL"))


def test_era_before_2025_07_03_with_tag_lists() -> None:
    data = load_export(IMG_LEGACY)
    del data["receipt_word_labels"]
    tags = [{"image_id": IMG_LEGACY, "line_id": 1, "word_id": 1, "tag": "MERCHANT_NAME",
             "timestamp_added": "2025-06-01T00:00:00", "validated": None}]
    rtags = [dict(tags[0], receipt_id=1), dict(tags[0], receipt_id=1, word_id=2, tag="ADDRESS")]
    data = {**{k: data[k] for k in list(data)[:6]}, "word_tags": tags, **{k: data[k] for k in list(data)[6:]},
            "receipt_word_tags": rtags}
    p = plan(data)
    want = expected_without_types(load_expected([IMG_LEGACY]), "RECEIPT_WORD_LABEL")
    assert_items_equal(by_key(p.items), want)
    # obsolete entities are left out, and said so (not silently)
    left_out = {**p.excluded, **p.ignored}
    assert left_out.get("word_tags") == 1 and left_out.get("receipt_word_tags") == 2


def test_missing_lists_are_empty() -> None:
    data = load_export(IMG)
    for name in ("letters", "receipt_letters", "ocr_jobs", "ocr_routing_decisions", "receipt_places"):
        del data[name]
    want = expected_without_types(load_expected([IMG]), "LETTER", "RECEIPT_LETTER", "OCR_JOB",
                                  "OCR_ROUTING_DECISION", "RECEIPT_PLACE")
    assert_items_equal(items(data), want)


CDN_SIZES = [f"cdn_{s}{f}_s3_key" for s in ("thumbnail", "small", "medium") for f in ("", "_webp", "_avif")]
REOCR_REFINE = ["receipt_id", "reocr_region", "reocr_reason", "reocr_strategy", "reocr_mechanism",
                "reocr_words_accepted", "reocr_words_rejected", "reocr_delta_before",
                "reocr_delta_after", "refine_summary", "refine_merchant_name"]


def test_fields_added_later_take_class_defaults() -> None:
    """An old export of IMG_LEGACY: the fields added later are missing and the defaults are
    written; every other attribute of every item is unchanged."""
    data = load_export(IMG_LEGACY)
    drop_fields(data["images"], "receipt_count", "image_type", *CDN_SIZES)
    drop_fields(data["receipts"], *CDN_SIZES)
    drop_fields(data["receipt_lines"], "is_noise")
    drop_fields(data["receipt_words"], "is_noise")
    drop_fields(data["ocr_jobs"], *[f for f in REOCR_REFINE if f.startswith(("reocr_", "refine_"))])
    drop_fields(data["receipt_word_labels"], "label_proposed_by", "label_consolidated_from")

    want = copy.deepcopy(load_expected([IMG_LEGACY]))
    for item in want.values():
        t = item["TYPE"]["S"]
        if t == "IMAGE":
            item["receipt_count"] = NULL
            item["GSI3SK"] = {"S": "NUM_RECEIPTS#00000"}
            item["image_type"] = {"S": "SCAN"}
            item["GSI3PK"] = {"S": "IMAGE#SCAN"}
        if t in ("IMAGE", "RECEIPT"):
            item.update({k: NULL for k in CDN_SIZES})
        if t in ("RECEIPT_LINE", "RECEIPT_WORD"):
            item["is_noise"] = {"BOOL": False}
        if t == "OCR_JOB":
            item.update({k: NULL for k in REOCR_REFINE if k.startswith(("reocr_", "refine_"))})
        if t == "RECEIPT_WORD_LABEL":
            item.update(label_proposed_by=NULL, label_consolidated_from=NULL)
    assert_items_equal(items(data), want)


def test_is_noise_true_is_kept() -> None:
    assert entity_item("receipt_lines", 2, is_noise=True)["is_noise"] == {"BOOL": True}
    assert entity_item("receipt_words", 2, is_noise=True)["is_noise"] == {"BOOL": True}


# --------------------------------------------------------------------------- migration rules (§5)


@pytest.mark.parametrize("kind", ["images", "receipts"])
@pytest.mark.parametrize("raw,want_raw", [
    ("dev-raw-bucket", "prod-raw-bucket"), ("legacy-raw-bucket", "legacy-raw-bucket"),
    ("Dev-Raw-Bucket", "Dev-Raw-Bucket"), ("dev-raw-bucket-2", "dev-raw-bucket-2"), ("", ""),
    ("prod-raw-bucket", "prod-raw-bucket"),
])
def test_raw_bucket_renamed_only_when_exactly_dev(kind: str, raw: str, want_raw: str) -> None:
    assert entity_item(kind, raw_s3_bucket=raw)["raw_s3_bucket"] == {"S": want_raw}


@pytest.mark.parametrize("kind", ["images", "receipts"])
@pytest.mark.parametrize("cdn,want", [
    ("dev-cdn-bucket", {"S": "prod-cdn-bucket"}), ("old-cdn", {"S": "old-cdn"}), (None, NULL), ("", NULL),
    ("dev-raw-bucket", {"S": "dev-raw-bucket"}),
])
def test_cdn_bucket_renamed_only_when_exactly_dev(kind: str, cdn: str | None, want: dict[str, Any]) -> None:
    assert entity_item(kind, cdn_s3_bucket=cdn)["cdn_s3_bucket"] == want


def test_bucket_rules_touch_nothing_else() -> None:
    """Keys are unchanged by the bucket rules; OCR buckets and every *_s3_key are copied as is."""
    job = entity_item("ocr_jobs", s3_bucket="dev-raw-bucket", s3_key="dev-raw-bucket/x.png")
    assert job["s3_bucket"] == {"S": "dev-raw-bucket"} and job["s3_key"] == {"S": "dev-raw-bucket/x.png"}
    decision = entity_item("ocr_routing_decisions", s3_bucket="dev-cdn-bucket")
    assert decision["s3_bucket"] == {"S": "dev-cdn-bucket"}
    image = entity_item("images", raw_s3_key="dev-raw-bucket", cdn_s3_key="dev-cdn-bucket")
    assert image["raw_s3_key"] == {"S": "dev-raw-bucket"} and image["cdn_s3_key"] == {"S": "dev-cdn-bucket"}


def test_without_bucket_rules_buckets_are_kept() -> None:
    want = copy.deepcopy(load_expected([IMG]))
    for item in want.values():
        if item["TYPE"]["S"] in ("IMAGE", "RECEIPT"):
            assert item["raw_s3_bucket"] == {"S": "prod-raw-bucket"}
            item["raw_s3_bucket"] = {"S": "dev-raw-bucket"}
            if item["cdn_s3_bucket"] == {"S": "prod-cdn-bucket"}:
                item["cdn_s3_bucket"] = {"S": "dev-cdn-bucket"}
    assert_items_equal(items(load_export(IMG), rules=tool.Rules({}, {})), want)


@pytest.mark.parametrize("status", ["NONE", "PENDING", "SUCCESS", "FAILED", "NOISE"])
@pytest.mark.parametrize("kind,prefix", [("receipt_lines", "LINE#"), ("receipt_words", "WORD#")])
def test_embedding_status_reset(kind: str, prefix: str, status: str) -> None:
    data = edited(kind, 2, embedding_status=status, is_noise=status == "NOISE")
    entry = data[kind][2]
    item = one(data, sk_of(kind, entry))
    assert item["embedding_status"] == {"S": "NONE"}
    assert item["GSI1PK"] == {"S": "EMBEDDING_STATUS#NONE"}
    assert item["GSI1SK"]["S"] == prefix + f"IMAGE#{IMG}#" + sk_of(kind, entry)
    assert item["is_noise"] == {"BOOL": status == "NOISE"}


@pytest.mark.parametrize("kind", ["receipt_lines", "receipt_words"])
def test_embedding_status_invalid_rejected(kind: str) -> None:
    assert entity_error(kind, 1, embedding_status="DONE").field == "embedding_status"
    assert entity_error(kind, 1, embedding_status="success").field == "embedding_status"


def test_every_migrated_embedding_is_findable_by_the_pipeline_query() -> None:
    for image_id in GOLDEN_IDS:
        for item in plan(load_export(image_id)).items:
            if item["TYPE"]["S"] in ("RECEIPT_LINE", "RECEIPT_WORD"):
                assert item["GSI1PK"] == {"S": "EMBEDDING_STATUS#NONE"}
                assert item["embedding_status"] == {"S": "NONE"}


# --------------------------------------------------------------------------- never-copy kinds (§7)

RUN = {"PK": f"IMAGE#{IMG}", "SK": "RECEIPT#00001#COMPACTION_RUN#run-1", "TYPE": "COMPACTION_RUN",
       "GSI1PK": "RUNS", "GSI1SK": "CREATED_AT#2025-08-01T00:00:00", "run_id": "run-1"}
LOCK = {"PK": "LOCK#words#lock-1", "SK": "LOCK", "TYPE": "COMPACTION_LOCK", "GSI1PK": "LOCK#words",
        "GSI1SK": "EXPIRES#2025-08-01T00:00:00"}
BATCH = {"PK": "BATCH#b-1", "SK": f"RESULT#IMAGE#{IMG}#RECEIPT#00001#LINE#001#WORD#001",
         "TYPE": "EMBEDDING_BATCH_RESULT", "GSI2PK": "BATCH#b-1", "GSI2SK": "STATUS#SUCCESS"}
JOB = {"PK": "JOB#j-1", "SK": "JOB", "TYPE": "JOB", "GSI1PK": "STATUS#running",
       "GSI1SK": "CREATED#2025-08-01T00:00:00", "GSI2PK": "JOB_NAME#train", "GSI2SK": "CREATED#2025-08-01"}
METRIC = {"PK": "JOB#j-1", "SK": "METRIC#loss#2025-08-01T00:00:00", "TYPE": "JOB_METRIC",
          "GSI1PK": "METRIC#loss", "GSI1SK": "2025-08-01T00:00:00"}
NEVER = {"compaction_runs": RUN, "compaction_locks": LOCK, "embedding_batch_results": BATCH,
         "jobs": JOB, "job_metrics": METRIC}


@pytest.mark.parametrize("list_name", sorted(NEVER))
def test_never_copy_lists_are_skipped_and_counted(list_name: str) -> None:
    data = load_export(IMG)
    data[list_name] = [NEVER[list_name], dict(NEVER[list_name], SK=NEVER[list_name]["SK"] + "x")]
    p = plan(data)
    assert_items_equal(by_key(p.items), load_expected([IMG]))
    assert sum(p.excluded.values()) == 2
    assert not p.ignored


@pytest.mark.parametrize("entry", [RUN, LOCK, BATCH, JOB, METRIC], ids=lambda e: e["TYPE"])
@pytest.mark.parametrize("with_type", [True, False], ids=["by_type", "by_key_shape"])
@pytest.mark.parametrize("list_name", ["lines", "receipt_lines", "receipt_words", "ocr_jobs",
                                       "receipt_places"])
def test_never_copy_entries_inside_known_lists(entry: dict[str, Any], with_type: bool,
                                               list_name: str) -> None:
    data = load_export(IMG)
    raw = dict(entry) if with_type else {k: v for k, v in entry.items() if k != "TYPE"}
    data[list_name].append(raw)
    p = plan(data)
    got = by_key(p.items)
    assert_items_equal(got, load_expected([IMG]))
    assert all(item["TYPE"]["S"] not in tool.NEVER_COPY_TYPES for item in got.values())
    assert sum(p.excluded.values()) == 1


@pytest.mark.parametrize("entry", [RUN, dict(RUN, TYPE=None)], ids=["by_type", "by_key_shape"])
def test_never_copy_entry_in_the_images_list(entry: dict[str, Any]) -> None:
    """A COMPACTION_RUN lives in the IMAGE# partition; next to the image entry it is skipped
    like anywhere else, and does not make the file look like it holds two images."""
    data = load_export(IMG)
    data["images"].append({k: v for k, v in entry.items() if v is not None})
    p = plan(data)
    assert_items_equal(by_key(p.items), load_expected([IMG]))
    assert sum(p.excluded.values()) == 1


def test_never_copy_type_only() -> None:
    data = load_export(IMG)
    data["receipt_words"].append({"TYPE": "COMPACTION_RUN", "run_id": "r"})
    p = plan(data)
    assert_items_equal(by_key(p.items), load_expected([IMG]))
    assert sum(p.excluded.values()) == 1


def test_unknown_list_fails_the_image() -> None:
    data = load_export(IMG)
    data["receipt_summaries"] = [{"image_id": IMG, "receipt_id": 1}]
    err = fails(data)
    assert err.entity == "receipt_summaries"
    assert "would be silently lost in prod" in err.message


def test_unknown_empty_list_fails_too() -> None:
    data = load_export(IMG)
    data["receipt_sections"] = []
    assert fails(data).entity == "receipt_sections"


def test_unknown_list_ignored_with_ignore_unknown() -> None:
    data = load_export(IMG)
    data["receipt_summaries"] = [{"image_id": IMG, "receipt_id": 1}, {"image_id": IMG, "receipt_id": 2}]
    p = plan(data, ignore_unknown=True)
    assert_items_equal(by_key(p.items), load_expected([IMG]))
    assert dict(p.ignored) == {"receipt_summaries": 2}


def test_unknown_field_fails_even_with_ignore_unknown() -> None:
    data = edited("receipt_words", 4, colour="red")
    for flag in (False, True):
        err = fails(copy.deepcopy(data), ignore_unknown=flag)
        assert (err.entity, err.index, err.field) == ("receipt_words", 4, "colour")


# --------------------------------------------------------------------------- ids and keys


@pytest.mark.parametrize("kind", ["lines", "receipt_letters", "receipt_word_labels", "ocr_routing_decisions"])
def test_child_of_another_image_rejected(kind: str) -> None:
    data = load_export(IMG)
    data[kind][-1]["image_id"] = IMG_PLACE_EMPTY_ID
    err = fails(data)
    assert (err.entity, err.index, err.field) == (kind, len(data[kind]) - 1, "image_id")


@pytest.mark.parametrize("kind,field,value", [
    ("lines", "line_id", 0), ("letters", "letter_id", 0), ("receipts", "receipt_id", 0),
    ("receipt_word_labels", "line_id", 0), ("receipt_word_labels", "word_id", 0),
    ("words", "word_id", -1), ("receipt_words", "line_id", -1), ("receipt_barcodes", "barcode_id", -1),
    ("images", "width", 0), ("receipts", "height", -5), ("images", "receipt_count", -1),
    ("ocr_routing_decisions", "receipt_count", -1), ("ocr_jobs", "reocr_words_accepted", -1),
])
def test_ids_and_sizes_below_minimum_rejected(kind: str, field: str, value: int) -> None:
    image = IMG_LEGACY if kind == "ocr_jobs" else IMG
    assert entity_error(kind, image_id=image, **{field: value}).field == field


@pytest.mark.parametrize("kind,field", [
    ("receipt_words", "line_id"), ("receipt_words", "word_id"), ("receipt_letters", "letter_id"),
    ("receipt_lines", "line_id"), ("words", "line_id"), ("receipt_barcodes", "barcode_id"),
])
def test_zero_ids_allowed_where_the_schema_allows(kind: str, field: str) -> None:
    values: dict[str, Any] = {field: 0}
    data = edited(kind, 0, **values)
    assert sk_of(kind, data[kind][0]) in {sk for _, sk in items(data)}


# --------------------------------------------------------------------------- more per-entity rules


@pytest.mark.parametrize("kind,values,field,want", [
    ("lines", {"text": ""}, "text", {"S": ""}),
    ("receipt_barcodes", {"text": ""}, "text", {"S": ""}),
    ("receipt_barcodes", {"symbology": "QR_CODE"}, "symbology", {"S": "QR_CODE"}),
    ("receipt_places", {"validated_by": ""}, "validated_by", NULL),
    ("receipt_places", {"validated_by": "PHONE_LOOKUP"}, "validated_by", {"S": "PHONE_LOOKUP"}),
    ("ocr_jobs", {"job_type": "LINE_ITEM_REFINE"}, "job_type", {"S": "LINE_ITEM_REFINE"}),
    ("ocr_jobs", {"reocr_strategy": "upscale2x"}, "reocr_strategy", {"S": "upscale2x"}),
    ("ocr_jobs", {"receipt_id": 3}, "receipt_id", {"N": "3"}),
    ("ocr_jobs", {"reocr_words_accepted": 0}, "reocr_words_accepted", {"N": "0"}),
    ("ocr_routing_decisions", {"receipt_count": 0}, "receipt_count", {"N": "0"}),
])
def test_values_written(kind: str, values: dict[str, Any], field: str, want: dict[str, Any]) -> None:
    assert entity_item(kind, **values)[field] == want


@pytest.mark.parametrize("kind,field,default", [
    ("receipt_places", "places_api_version", {"S": "v1"}),
    ("ocr_jobs", "job_type", {"S": "FIRST_PASS"}),
    ("ocr_jobs", "status", {"S": "PENDING"}),
    ("ocr_routing_decisions", "status", {"S": "PENDING"}),
])
def test_missing_optional_field_takes_class_default(kind: str, field: str, default: dict[str, Any]) -> None:
    data = load_export(IMG)
    del data[kind][0][field]
    assert one(data, sk_of(kind, data[kind][0]))[field] == default


def test_ocr_status_default_is_in_the_gsi_keys() -> None:
    data = load_export(IMG)
    del data["ocr_jobs"][0]["status"], data["ocr_routing_decisions"][0]["status"]
    job = one(data, sk_of("ocr_jobs", data["ocr_jobs"][0]))
    assert job["GSI1PK"] == job["GSI2PK"] == {"S": "OCR_JOB_STATUS#PENDING"}
    decision = one(data, sk_of("ocr_routing_decisions", data["ocr_routing_decisions"][0]))
    assert decision["GSI1PK"] == {"S": "OCR_ROUTING_DECISION_STATUS#PENDING"}


@pytest.mark.parametrize("kind,field,image_id", [
    ("receipt_places", "timestamp", IMG), ("receipt_places", "place_id", IMG),
    ("receipt_metadatas", "matched_fields", IMG_LEGACY), ("receipt_metadatas", "timestamp", IMG_LEGACY),
    ("receipt_word_labels", "reasoning", IMG), ("receipt_word_labels", "timestamp_added", IMG),
    ("receipt_barcodes", "symbology", IMG), ("receipts", "top_left", IMG), ("images", "raw_s3_bucket", IMG),
    ("ocr_jobs", "created_at", IMG), ("ocr_jobs", "s3_key", IMG), ("lines", "confidence", IMG),
    ("words", "bounding_box", IMG), ("letters", "text", IMG), ("receipt_lines", "angle_degrees", IMG),
])
def test_missing_required_field_rejected(kind: str, field: str, image_id: str) -> None:
    data = load_export(image_id)
    del data[kind][0][field]
    err = fails(data)
    assert (err.entity, err.index, err.field) == (kind, 0, field)


@pytest.mark.parametrize("kind,values,field", [
    ("receipt_barcodes", {"symbology": ""}, "symbology"),
    ("receipts", {"top_left": {"x": 0.1, "y": 0.2, "z": 0}}, "top_left"),
    ("lines", {"bottom_right": {"x": 0.1}}, "bottom_right"),
    ("ocr_jobs", {"job_type": "first_pass"}, "job_type"),
    ("ocr_jobs", {"reocr_strategy": "sharpen"}, "reocr_strategy"),
    ("ocr_jobs", {"reocr_region": {"x": 0, "y": 0, "width": 0, "height": 1}}, "reocr_region"),
    ("ocr_jobs", {"reocr_region": {"x": 0, "y": 0, "width": 1}}, "reocr_region"),
    ("ocr_jobs", {"receipt_id": 0}, "receipt_id"),
    ("ocr_jobs", {"s3_bucket": ""}, "s3_bucket"),
    ("ocr_jobs", {"created_at": None}, "created_at"),
    ("ocr_routing_decisions", {"status": "DONE"}, "status"),
    ("ocr_routing_decisions", {"s3_key": ""}, "s3_key"),
    ("receipt_words", {"is_noise": "false"}, "is_noise"),
    ("receipt_words", {"extracted_data": ["a"]}, "extracted_data"),
    ("receipt_places", {"address_components": ["x"]}, "address_components"),
    ("images", {"raw_s3_bucket": None}, "raw_s3_bucket"),
])
def test_invalid_values_rejected(kind: str, values: dict[str, Any], field: str) -> None:
    assert entity_error(kind, **values).field == field


@pytest.mark.parametrize("kind,values,field", [
    ("ocr_jobs", {"reocr_delta_before": 1e300}, "reocr_delta_before"),
    ("ocr_jobs", {"reocr_delta_after": -1e200}, "reocr_delta_after"),
    ("ocr_jobs", {"reocr_delta_after": 1e-200}, "reocr_delta_after"),
    ("ocr_jobs", {"refine_summary": {"subtotal": 1e130, "tax": None, "grand_total": 1.0}}, "refine_summary"),
    ("receipt_places", {"hours_data": {"rating": 1e200}}, "hours_data"),
    ("receipt_places", {"address_components": {"n": 2**140}}, "address_components"),
    ("images", {"width": 2**140}, "width"),
    ("images", {"receipt_count": 10**38 + 1}, "receipt_count"),
])
def test_numbers_dynamodb_cannot_store_are_rejected_before_writing(kind: str, values: dict[str, Any],
                                                                   field: str) -> None:
    """DynamoDB numbers: magnitude 1E-130 .. 9.9999...E+125, at most 38 significant digits
    (developer guide, "Data types: Number"). An item outside that fails at write time, after
    the image's other items were written; it has to fail the image up front instead."""
    assert entity_error(kind, **values).field == field


@pytest.mark.parametrize("kind,values,field,text", [
    ("ocr_jobs", {"reocr_delta_before": 1e125}, "reocr_delta_before", "1e+125"),
    ("ocr_jobs", {"reocr_delta_before": -1e-130}, "reocr_delta_before", "-1e-130"),
    ("images", {"receipt_count": 10**38 - 1}, "receipt_count", str(10**38 - 1)),
    ("images", {"width": 10**40}, "width", str(10**40)),  # 1 significant digit
])
def test_numbers_at_the_dynamodb_limits_are_written(kind: str, values: dict[str, Any], field: str,
                                                   text: str) -> None:
    assert entity_item(kind, **values)[field] == {"N": text}


@pytest.mark.parametrize("kind,field", [("words", "text"), ("receipt_word_labels", "reasoning"),
                                        ("receipt_places", "merchant_name")])
def test_lone_surrogate_is_an_input_error(kind: str, field: str) -> None:
    """`"\\ud800"` is valid JSON text but not encodable as UTF-8 (boto3 could not send it):
    the image fails with an InputError, not a crash of the whole run."""
    data = edited(kind, 1 if kind != "receipt_places" else 0, **{field: "Caf\ud800"})
    with pytest.raises(tool.InputError):
        plan(data)
