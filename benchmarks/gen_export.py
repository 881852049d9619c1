"""Generate a synthetic but valid dev export (current era) for benchmarks and tests.

The export looks like what receipt_dynamo's ``export_image`` writes: one ``<image_id>.json``
per image, a JSON object whose values are lists of entity dicts, written with
``json.dump(..., indent=4)``.  Every entity dict has exactly the fields (names and JSON types)
of the golden exports in ``tests/fixtures/golden/export`` and obeys the rules of ITEMS.md.

Proportions per image: 1-3 receipts, 15-45 lines per receipt, 1-6 words per line, one letter
per character of every word (receipt and image level), labels on roughly two thirds of the
receipt words, one place per receipt, 0-1 barcode per receipt, one OCR job and one routing
decision.  On average this is ~2,700 items per image, ~150 of them labels.

``size="small"`` keeps of each such image what a typical dev image holds (the golden exports
have 90-270 items): its first receipt, that receipt's first lines with their words and labels,
and the letters of a few words only; ~110 items per image.  Many small images are where the
per-image costs of a copy (reads of prod, each image's last partial batch) show most.

The output depends only on ``seed`` and the image index, so ``generate_export(d, 100, 7)``
writes the same 100 files whatever the number of worker processes; ``n_images=200`` writes
those 100 plus 100 more.

    python benchmarks/gen_export.py OUT_DIR --images 1000 --seed 7
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time
import uuid
from concurrent.futures import ProcessPoolExecutor
from datetime import datetime, timedelta, timezone
from json.encoder import encode_basestring_ascii as _encode_str
from pathlib import Path
from typing import Any

EXPORT_KEYS = (
    "images", "lines", "words", "letters", "receipts", "receipt_lines", "receipt_words",
    "receipt_letters", "receipt_word_labels", "receipt_places", "receipt_barcodes",
    "ocr_jobs", "ocr_routing_decisions",
)

DEV_RAW_BUCKET = "dev-raw-bucket"
DEV_CDN_BUCKET = "dev-cdn-bucket"
DEV_UPLOAD_BUCKET = "dev-upload-bucket"

EMBEDDING_STATUSES = ("NONE", "PENDING", "SUCCESS", "SUCCESS", "SUCCESS", "FAILED")
VALIDATION_STATUSES = ("NONE", "PENDING", "VALID", "VALID", "VALID", "INVALID", "NEEDS_REVIEW")
PROPOSED_BY = (None, "manual", "gpt-4o-mini", "layoutlm-v3", "label_harmonizer")
CONSOLIDATED_FROM = (None, None, None, "ADDRESS", "PRODUCT_NAME")
SYMBOLOGIES = ("ITF14", "I2of5", "PDF417", "Code128", "QRCode", "EAN13", "UPC_A")
VALIDATION_METHODS = ("PHONE_LOOKUP", "ADDRESS_LOOKUP", "NEARBY_LOOKUP", "TEXT_SEARCH", "INFERENCE")
PLACE_STATUSES = ("MATCHED", "MATCHED", "UNSURE", "NO_MATCH")
# A label longer than 34 characters gets no GSI1PK padding (ITEMS.md); include one now and then.
LONG_LABEL = "EXTENDED_WARRANTY_PROTECTION_PLAN_X"

MERCHANTS = (
    # name, category, types, street, city, zip, phone
    ("Trader Joe's", "grocery_store", ["grocery_store", "food"],
     "3835 E Thousand Oaks Blvd", "Westlake Village", "91362", "(805) 494-5040"),
    ("Costco Wholesale", "warehouse_store", ["warehouse_store", "store"],
     "5700 Lindero Canyon Rd", "Westlake Village", "91362", "(818) 865-9960"),
    ("Sprouts Farmers Market", "grocery_store", ["grocery_store", "food", "store"],
     "5704 Lindero Canyon Rd", "Westlake Village", "91362", "(818) 865-8217"),
    ("CVS Pharmacy", "pharmacy", ["pharmacy", "health", "store"],
     "30861 Thousand Oaks Blvd", "Westlake Village", "91362", "(818) 991-0760"),
    ("Vons", "grocery_store", ["grocery_store", "supermarket", "food"],
     "30800 Russell Ranch Rd", "Westlake Village", "91362", "(818) 597-8485"),
    ("Café & Co.", "cafe", ["cafe", "food"],
     "2900 Townsgate Rd", "Westlake Village", "91361", "(805) 379-0505"),
    ("The Home Depot", "hardware_store", ["hardware_store", "home_goods_store", "store"],
     "5600 Lindero Canyon Rd", "Westlake Village", "91362", "(818) 889-2810"),
    ("Target", "department_store", ["department_store", "store"],
     "2695 E Thousand Oaks Blvd", "Thousand Oaks", "91362", "(805) 370-8300"),
)

PRODUCTS = (
    "ORGANIC BANANAS", "ROTISSERIE CHKN", "MANDARIN ORANGES", "GREEK YOGURT", "SOURDOUGH",
    "AVOCADO", "EGGS LARGE 12CT", "WHOLE MILK", "COFFEE BEANS", "OLIVE OIL", "PASTA",
    "TOMATO SAUCE", "SPINACH", "CHEDDAR", "ALMONDS", "DARK CHOCOLATE", "FLOWERS",
    "PAPER TOWELS", "DISH SOAP", "SPARKLING WATER", "BLUEBERRIES", "CHICKEN THIGHS",
    "GROUND BEEF", "TORTILLAS", "SALSA", "HUMMUS", "CARROTS", "BROCCOLI", "RICE",
    "CRÈME FRAÎCHE", "JALAPEÑO CHIPS",
)
PAYMENTS = ("VISA ****1234", "MASTERCARD ****9876", "AMEX ****3005", "DEBIT ****4411", "CASH")
FOOTERS = (
    "THANK YOU FOR SHOPPING", "PLEASE COME AGAIN", "RETURNS WITHIN 30 DAYS",
    "SAVE YOUR RECEIPT", "STORE HOURS 7AM-10PM", "WWW.EXAMPLE.COM/SURVEY",
)
LABEL_REASONS = {
    "MERCHANT_NAME": "Position and format consistent with the receipt header",
    "ADDRESS_LINE": "Token matches address line pattern",
    "PHONE_NUMBER": "Token matches phone number pattern",
    "DATE": "Token matches date pattern",
    "TIME": "Token matches time pattern",
    "PRODUCT_NAME": "Token matches product name pattern",
    "QUANTITY": "Token matches quantity pattern",
    "UNIT_PRICE": "Token matches unit price pattern",
    "LINE_TOTAL": "Token matches line total pattern",
    "SUBTOTAL": "Token matches subtotal pattern",
    "TAX": "Token matches tax pattern",
    "GRAND_TOTAL": "Token matches grand total pattern",
    "PAYMENT_METHOD": "Token matches payment method pattern",
    LONG_LABEL: "Token matches warranty pattern",
}

EPOCH = datetime(2025, 6, 1)
UTC_TZ = timezone.utc  # not datetime.UTC: the project mypy targets an older Python


def _uuid4(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _when(rng: random.Random, start: datetime = EPOCH, days: int = 180) -> datetime:
    return start + timedelta(seconds=rng.randrange(days * 86400),
                             microseconds=rng.choice((0, rng.randrange(1, 1_000_000))))


def _ts_string(rng: random.Random, dt: datetime) -> str:
    """A string-typed timestamp as dev stores it (kept verbatim by the migration)."""
    r = rng.random()
    if r < 0.80:
        return dt.isoformat()
    if r < 0.90:
        return dt.replace(microsecond=0).isoformat() + "Z"
    if r < 0.97:
        return dt.replace(microsecond=0).isoformat(sep=" ")
    return dt.isoformat(timespec="milliseconds") + "Z"


def _conf(rng: random.Random) -> float:
    """Confidence with 2 decimals in (0, 1], mostly high."""
    return round(min(1.0, 0.4 + rng.betavariate(5, 1) * 0.6), 2)


class _Geom:
    """Geometry helpers: boxes in normalised [0, 1] coordinates, y growing upwards."""

    @staticmethod
    def block(text: str, x: float, y: float, w: float, h: float, deg: float,
              conf: float) -> dict[str, Any]:
        return {
            "text": text,
            "bounding_box": {"x": x, "y": y, "width": w, "height": h},
            "top_left": {"x": x, "y": y + h},
            "top_right": {"x": x + w, "y": y + h},
            "bottom_left": {"x": x, "y": y},
            "bottom_right": {"x": x + w, "y": y},
            "angle_degrees": deg,
            "angle_radians": math.radians(deg),
            "confidence": conf,
        }


def _receipt_lines(rng: random.Random, merchant: tuple[Any, ...],
                   when: datetime) -> list[list[tuple[str, str | None, dict[str, str] | None]]]:
    """The text of one receipt: a list of lines, each a list of (word, label, extracted_data)."""
    name, _cat, _types, street, city, zip_code, phone = merchant
    lines: list[list[tuple[str, str | None, dict[str, str] | None]]] = []
    lines.append([(w, "MERCHANT_NAME", None) for w in name.upper().split()])
    lines.append([(w, "ADDRESS_LINE", None) for w in street.split()])
    lines.append([(w, "ADDRESS_LINE", None) for w in f"{city}, CA {zip_code}".split()])
    area, number = phone.split(" ")
    lines.append([(area, "PHONE_NUMBER", {"type": "phone", "value": area}),
                  (number, "PHONE_NUMBER", {"type": "phone", "value": phone})])
    date = when.strftime("%m/%d/%Y")
    lines.append([(date, "DATE", {"type": "date", "value": date}),
                  (when.strftime("%H:%M"), "TIME", None)])
    subtotal = 0.0
    for _ in range(rng.randint(8, 32)):
        product = rng.choice(PRODUCTS)
        price = rng.randrange(49, 4999) / 100
        qty = rng.choice((1, 1, 1, 1, 2, 3))
        total = round(price * qty, 2)
        subtotal += total
        words: list[tuple[str, str | None, dict[str, str] | None]]
        words = [(w, "PRODUCT_NAME", None) for w in product.split()]
        if qty > 1:
            words.append((f"{qty}@", "QUANTITY", None))
            words.append((f"{price:.2f}", "UNIT_PRICE", None))
        money = f"{total:.2f}"
        ed: dict[str, str] | None = {"type": "currency", "value": money}
        if rng.random() < 0.5:
            ed = None
        words.append((money, "LINE_TOTAL", ed))
        lines.append(words)
        if rng.random() < 0.05:
            lines.append([("PROTECTION", LONG_LABEL, None), ("PLAN", LONG_LABEL, None)])
    tax = round(subtotal * 0.0725, 2)
    lines.append([("SUBTOTAL", None, None), (f"{subtotal:.2f}", "SUBTOTAL", None)])
    lines.append([("TAX", None, None), (f"{tax:.2f}", "TAX", None)])
    grand = f"{subtotal + tax:.2f}"
    lines.append([("TOTAL", None, None),
                  (grand, "GRAND_TOTAL", {"type": "currency", "value": grand})])
    lines.append([(w, "PAYMENT_METHOD", None) for w in rng.choice(PAYMENTS).split()])
    for footer in rng.sample(FOOTERS, rng.randint(0, 3)):
        lines.append([(w, None, None) for w in footer.split()])
    return lines


def _cdn_keys(prefix: str, with_medium: bool = True) -> dict[str, str | None]:
    keys: dict[str, str | None] = {
        "cdn_s3_key": f"{prefix}.jpg",
        "cdn_webp_s3_key": f"{prefix}.webp",
        "cdn_avif_s3_key": f"{prefix}.avif",
    }
    for size in ("thumbnail", "small", "medium"):
        ok = with_medium or size != "medium"
        keys[f"cdn_{size}_s3_key"] = f"{prefix}_{size}.jpg" if ok else None
        keys[f"cdn_{size}_webp_s3_key"] = f"{prefix}_{size}.webp" if ok else None
        keys[f"cdn_{size}_avif_s3_key"] = f"{prefix}_{size}.avif" if ok else None
    return keys


def generate_image(seed: int, index: int) -> dict[str, list[dict[str, Any]]]:
    """The export object of image number ``index`` for ``seed`` (deterministic)."""
    rng = random.Random(f"gen_export:{seed}:{index}")
    image_id = _uuid4(rng)
    out: dict[str, list[dict[str, Any]]] = {key: [] for key in EXPORT_KEYS}
    width, height = rng.choice(((1170, 2532), (4032, 3024), (3024, 4032), (2550, 3300)))
    added = _when(rng)
    n_receipts = rng.choice((1, 2, 2, 3))
    image_line_id = 0
    for receipt_id in range(1, n_receipts + 1):
        rid = f"{receipt_id:05d}"
        merchant = rng.choice(MERCHANTS)
        bought = added - timedelta(days=rng.randint(0, 30), seconds=rng.randrange(86400))
        text_lines = _receipt_lines(rng, merchant, bought)
        # Where the receipt sits in the image: a vertical strip, slightly skewed.
        left = (receipt_id - 1) / n_receipts + rng.uniform(0.0, 0.05)
        right = receipt_id / n_receipts - rng.uniform(0.0, 0.05)
        bottom, top = rng.uniform(0.02, 0.1), rng.uniform(0.85, 0.98)
        skew = rng.uniform(-0.01, 0.01)
        deg = rng.uniform(-1.5, 1.5)
        sha = f"{rng.getrandbits(256):064x}"
        out["receipts"].append({
            "sha256": sha,
            "cdn_s3_bucket": DEV_CDN_BUCKET,
            **_cdn_keys(f"assets/{image_id}_RECEIPT_{rid}", rng.random() < 0.8),
            "image_id": image_id,
            "receipt_id": receipt_id,
            "width": int(width * (right - left)),
            "height": int(height * (top - bottom)),
            "timestamp_added": _ts_string(rng, added + timedelta(seconds=rng.randint(5, 900))),
            "raw_s3_bucket": DEV_RAW_BUCKET,
            "raw_s3_key": f"raw/{image_id}_RECEIPT_{rid}.png",
            "top_left": {"x": left, "y": top},
            "top_right": {"x": right, "y": top + skew},
            "bottom_left": {"x": left, "y": bottom},
            "bottom_right": {"x": right, "y": bottom},
        })
        rw, rh = right - left, top - bottom
        line_h = min(0.03, 0.9 / len(text_lines))
        for line_id, words in enumerate(text_lines, start=1):
            image_line_id += 1
            noise = rng.random() < 0.02
            line_status = "NOISE" if noise else rng.choice(EMBEDDING_STATUSES)
            y = 0.95 - line_id * line_h  # receipt-relative
            char_w = rng.uniform(0.018, 0.026)
            x = rng.uniform(0.03, 0.12)
            placed = []
            for word_text, label, ed in words:
                w = char_w * len(word_text)
                placed.append((word_text, label, ed, x, w))
                x += w + char_w
            line_text = " ".join(p[0] for p in placed)
            x0, x1 = placed[0][3], placed[-1][3] + placed[-1][4]
            h = line_h * 0.6
            out["receipt_lines"].append({
                "image_id": image_id,
                **_Geom.block(line_text, x0, y, x1 - x0, h, deg, _conf(rng)),
                "receipt_id": receipt_id,
                "embedding_status": line_status,
                "is_noise": noise,
                "line_id": line_id,
            })
            # Image level: the same text mapped into the receipt's region of the image.
            iy, ih = bottom + y * rh, h * rh
            ix0 = left + x0 * rw
            out["lines"].append({
                "image_id": image_id,
                **_Geom.block(line_text, ix0, iy, (x1 - x0) * rw, ih, deg, _conf(rng)),
                "line_id": image_line_id,
            })
            for word_id, (word_text, label, ed, wx, ww) in enumerate(placed, start=1):
                r_ed: dict[str, str] | None = ed
                if r_ed is None and rng.random() < 0.01:
                    r_ed = {}
                out["receipt_words"].append({
                    "image_id": image_id,
                    **_Geom.block(word_text, wx, y, ww, h, deg, _conf(rng)),
                    "receipt_id": receipt_id,
                    "embedding_status": "NOISE" if noise else rng.choice(EMBEDDING_STATUSES),
                    "is_noise": noise,
                    "line_id": line_id,
                    "word_id": word_id,
                    "extracted_data": r_ed,
                })
                iwx, iww = left + wx * rw, ww * rw
                out["words"].append({
                    "image_id": image_id,
                    **_Geom.block(word_text, iwx, iy, iww, ih, deg, _conf(rng)),
                    "line_id": image_line_id,
                    "word_id": word_id,
                    "extracted_data": dict(ed) if ed else None,
                })
                cw, icw = ww / len(word_text), iww / len(word_text)
                for letter_id, ch in enumerate(word_text, start=1):
                    out["receipt_letters"].append({
                        "image_id": image_id,
                        **_Geom.block(ch, wx + (letter_id - 1) * cw, y, cw, h, deg, _conf(rng)),
                        "receipt_id": receipt_id,
                        "line_id": line_id,
                        "word_id": word_id,
                        "letter_id": letter_id,
                    })
                    out["letters"].append({
                        "image_id": image_id,
                        **_Geom.block(ch, iwx + (letter_id - 1) * icw, iy, icw, ih, deg,
                                      _conf(rng)),
                        "line_id": image_line_id,
                        "word_id": word_id,
                        "letter_id": letter_id,
                    })
                if label is not None and not noise and rng.random() < 0.85:
                    labels = [label]
                    if label == "PRODUCT_NAME" and rng.random() < 0.1:
                        labels.append("ITEM_DESCRIPTION")
                    for lab in labels:
                        status = rng.choice(VALIDATION_STATUSES)
                        out["receipt_word_labels"].append({
                            "image_id": image_id,
                            "receipt_id": receipt_id,
                            "line_id": line_id,
                            "word_id": word_id,
                            "label": lab,
                            "reasoning": (LABEL_REASONS.get(lab) if rng.random() < 0.4 else None),
                            "timestamp_added": _ts_string(rng, _when(rng)),
                            "validation_status": status,
                            "label_proposed_by": rng.choice(PROPOSED_BY),
                            "label_consolidated_from": rng.choice(CONSOLIDATED_FROM),
                        })
        out["receipt_places"].append(_place(rng, image_id, receipt_id, merchant, added))
        if rng.random() < 0.5:
            digits = "".join(rng.choice("0123456789") for _ in range(12))
            bx, by = rng.uniform(0.1, 0.4), rng.uniform(0.02, 0.1)
            bw = rng.uniform(0.2, 0.4)
            bdeg = rng.uniform(-1.5, 1.5)
            out["receipt_barcodes"].append({
                "image_id": image_id,
                **_Geom.block(digits if rng.random() < 0.9 else "", bx, by, bw, 0.05, bdeg,
                              _conf(rng)),
                "receipt_id": receipt_id,
                "barcode_id": 0,
                "symbology": rng.choice(SYMBOLOGIES),
            })

    out["images"].append({
        "sha256": f"{rng.getrandbits(256):064x}",
        "cdn_s3_bucket": DEV_CDN_BUCKET,
        **_cdn_keys(f"assets/{image_id}"),
        "image_id": image_id,
        "width": width,
        "height": height,
        "timestamp_added": added.isoformat(),
        "raw_s3_bucket": DEV_RAW_BUCKET,
        "raw_s3_key": f"raw/{image_id}.png",
        "image_type": "SCAN" if width < height and rng.random() < 0.7 else "PHOTO",
        "receipt_count": n_receipts,
    })
    job_id = _uuid4(rng)
    created = added - timedelta(seconds=rng.randint(20, 120))
    finished = created + timedelta(seconds=rng.randint(10, 90))
    out["ocr_jobs"].append({
        "image_id": image_id,
        "job_id": job_id,
        "s3_bucket": DEV_UPLOAD_BUCKET,
        "s3_key": f"uploads/{image_id}.png",
        "created_at": created.isoformat(),
        "updated_at": finished.isoformat(),
        "status": "COMPLETED",
        "job_type": "FIRST_PASS",
        "receipt_id": None,
        "reocr_region": None,
        "reocr_reason": None,
        "reocr_strategy": None,
        "reocr_mechanism": None,
        "reocr_words_accepted": None,
        "reocr_words_rejected": None,
        "reocr_delta_before": None,
        "reocr_delta_after": None,
        "refine_summary": None,
        "refine_merchant_name": None,
    })
    out["ocr_routing_decisions"].append({
        "image_id": image_id,
        "job_id": job_id,
        "s3_bucket": DEV_UPLOAD_BUCKET,
        "s3_key": f"ocr_results/{image_id}.json",
        "created_at": finished.isoformat(),
        "updated_at": (finished + timedelta(seconds=2)).isoformat(),
        "receipt_count": n_receipts,
        "status": "COMPLETED",
    })
    return out


def _place(rng: random.Random, image_id: str, receipt_id: int, merchant: tuple[Any, ...],
           added: datetime) -> dict[str, Any]:
    name, category, types, street, city, zip_code, phone = merchant
    found = rng.random() < 0.93  # otherwise an unresolved place: place_id "" and no coordinates
    place_id = "ChIJ" + "".join(
        rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")
        for _ in range(23)) if found else ""
    lat, lng = 34.15 + rng.uniform(-0.02, 0.02), -118.8 + rng.uniform(-0.02, 0.02)
    coord: dict[str, float | None] = {
        "latitude": round(lat, 4), "longitude": round(lng, 4),
        "viewport_ne_lat": round(lat + 0.0013, 4), "viewport_ne_lng": round(lng + 0.0013, 4),
        "viewport_sw_lat": round(lat - 0.0013, 4), "viewport_sw_lng": round(lng - 0.0013, 4),
    }
    if not found:
        coord = dict.fromkeys(coord)
    digits = phone.replace("(", "").replace(")", "").replace(" ", "-")
    return {
        "image_id": image_id,
        "receipt_id": receipt_id,
        "place_id": place_id,
        "merchant_name": name,
        "merchant_category": category,
        "merchant_types": list(types),
        "formatted_address": f"{street}, {city}, CA {zip_code}, USA",
        "short_address": street,
        "address_components": {"locality": city, "country": "US"},
        **coord,
        "plus_code": "6MQW+XX " + city,
        "phone_number": phone,
        "phone_intl": "+1 " + digits,
        "website": "https://www.example.com/",
        "maps_url": f"https://maps.google.com/?cid={rng.getrandbits(60)}",
        "business_status": "OPERATIONAL",
        "open_now": rng.choice((True, False, None)) if found else None,
        "hours_summary": ["Mon-Sun 7AM-10PM"],
        "hours_data": {
            "weekday_descriptions": ["Monday: 7:00 AM \u2013 10:00 PM",
                                     "Tuesday: 7:00 AM \u2013 10:00 PM"],
            "open_24_hours": False,
        },
        "photo_references": [f"places/{place_id}/photos/{rng.getrandbits(48):012x}"] if found else [],
        "matched_fields": rng.sample(["name", "address", "phone"], rng.randint(1, 3)),
        "validated_by": rng.choice(VALIDATION_METHODS) if found else "",
        "validation_status": rng.choice(PLACE_STATUSES) if found else "",
        "confidence": round(rng.uniform(0.5, 1.0), 2),
        "reasoning": "Phone number and name match Google Places result",
        "timestamp": _when(rng, added, 30).replace(tzinfo=UTC_TZ).isoformat(),
        "places_api_version": "v1",
    }


# --- fast writer -------------------------------------------------------------------------------
# json.dump(indent=4) runs the pure-Python encoder; these produce the very same text ~2-3x faster
# (``--check`` compares them with json.dumps).  Letters, ~80% of all entities, use a template.

_GEOM_HEAD = ("image_id", "text", "bounding_box", "top_left", "top_right", "bottom_left",
              "bottom_right", "angle_degrees", "angle_radians", "confidence")
_CONTAINERS = (dict, list)


def _scalar(v: Any) -> str:
    t = type(v)
    if t is str:
        return _encode_str(v)
    if t is float:
        return float.__repr__(v)
    if t is bool:
        return "true" if v else "false"
    if t is int:
        return int.__repr__(v)
    if v is None:
        return "null"
    raise TypeError(f"cannot encode {t.__name__}")


def _encode(o: Any, ind: str) -> str:
    if type(o) is dict:
        if not o:
            return "{}"
        inner = ind + "    "
        return ("{\n" + inner + (",\n" + inner).join(
            _encode_str(k) + ": " + (_encode(v, inner) if type(v) in _CONTAINERS else _scalar(v))
            for k, v in o.items()) + "\n" + ind + "}")
    if type(o) is list:
        if not o:
            return "[]"
        inner = ind + "    "
        return ("[\n" + inner + (",\n" + inner).join(
            _encode(v, inner) if type(v) in _CONTAINERS else _scalar(v) for v in o)
            + "\n" + ind + "]")
    return _scalar(o)


def _letter_template(keys: tuple[str, ...], ind: str) -> str:
    inner, deeper = ind + "    ", ind + "        "

    def box(name: str, coords: tuple[str, ...]) -> str:
        body = ",\n".join(f'{deeper}"{c}": %r' for c in coords)
        return f'{inner}"{name}": {{\n{body}\n{inner}}}'

    parts = [f'{inner}"image_id": %s', f'{inner}"text": %s',
             box("bounding_box", ("x", "y", "width", "height"))]
    parts += [box(corner, ("x", "y")) for corner in _GEOM_HEAD[3:7]]
    parts += [f'{inner}"{k}": %r' for k in _GEOM_HEAD[7:]]
    parts += [f'{inner}"{k}": %d' for k in keys[len(_GEOM_HEAD):]]
    return "{\n" + ",\n".join(parts) + "\n" + ind + "}"


def _encode_letters(letters: list[dict[str, Any]], ind: str) -> str:
    """Letters as generated here: geometry head, then int ids only."""
    keys = tuple(letters[0])
    if keys[:len(_GEOM_HEAD)] != _GEOM_HEAD:
        return _encode(letters, ind)
    inner = ind + "    "
    tmpl = _letter_template(keys, inner)
    ids = keys[len(_GEOM_HEAD):]
    out = []
    for e in letters:
        bb, tl, tr, bl, br = (e["bounding_box"], e["top_left"], e["top_right"],
                              e["bottom_left"], e["bottom_right"])
        out.append(tmpl % (
            _encode_str(e["image_id"]), _encode_str(e["text"]),
            bb["x"], bb["y"], bb["width"], bb["height"], tl["x"], tl["y"], tr["x"], tr["y"],
            bl["x"], bl["y"], br["x"], br["y"], e["angle_degrees"], e["angle_radians"],
            e["confidence"], *(e[k] for k in ids)))
    return "[\n" + inner + (",\n" + inner).join(out) + "\n" + ind + "]"


def encode_export(data: dict[str, list[dict[str, Any]]]) -> str:
    """``json.dumps(data, indent=4)`` for a generated export, only faster."""
    parts = []
    for key, value in data.items():
        if key in ("letters", "receipt_letters") and value:
            text = _encode_letters(value, "    ")
        else:
            text = _encode(value, "    ")
        parts.append(f"    {_encode_str(key)}: {text}")
    return "{\n" + ",\n".join(parts) + "\n}"


SMALL_LINES = 8           # lines kept of the first receipt (image level: the same line ids)
SMALL_LETTER_LINES = 2   # lines whose first word keeps its letters


def shrink_image(data: dict[str, list[dict[str, Any]]]) -> dict[str, list[dict[str, Any]]]:
    """The small profile: receipt 1, its first SMALL_LINES lines (receipt 1's image-level
    lines have the same ids), letters of the first word of the first SMALL_LETTER_LINES."""
    def keep(key: str, e: dict[str, Any]) -> bool:
        if e.get("receipt_id") not in (1, None):
            return False
        if "line_id" in e and e["line_id"] > SMALL_LINES:
            return False
        if key in ("letters", "receipt_letters"):
            return e["word_id"] == 1 and e["line_id"] <= SMALL_LETTER_LINES
        return True

    out = {key: [e for e in entities if keep(key, e)] for key, entities in data.items()}
    for e in out["images"] + out["ocr_routing_decisions"]:
        e["receipt_count"] = 1
    return out


def _write_range(out_dir: str, seed: int, start: int, stop: int,
                 check: bool = False, size: str = "full") -> tuple[int, int]:
    """Write images start..stop-1; return (files, entities)."""
    entities = 0
    for index in range(start, stop):
        data = generate_image(seed, index)
        if size == "small":
            data = shrink_image(data)
        image_id = data["images"][0]["image_id"]
        entities += sum(len(v) for v in data.values())
        text = encode_export(data)
        if check and text != json.dumps(data, indent=4):
            raise AssertionError(f"fast encoder differs from json.dumps for image {index}")
        with open(os.path.join(out_dir, f"{image_id}.json"), "w", encoding="utf-8") as fp:
            fp.write(text)
    return stop - start, entities


def generate_export(out_dir: str | os.PathLike[str], n_images: int, seed: int = 0,
                    workers: int | None = None, check: bool = False,
                    size: str = "full") -> dict[str, int]:
    """Write ``n_images`` export files into ``out_dir``; return counts. ``size``: "full"
    (~2,700 items per image) or "small" (~110, see shrink_image).

    ``workers`` > 1 spreads the work over processes (default: CPU count, 1 for small exports);
    the files are identical whatever the value.  ``check`` compares every file's text with
    ``json.dumps(indent=4)`` (slow).
    """
    path = Path(out_dir)
    path.mkdir(parents=True, exist_ok=True)
    if workers is None:
        workers = min(os.cpu_count() or 1, 8) if n_images >= 50 else 1
    workers = max(1, min(workers, n_images or 1))
    chunk = max(1, min(50, -(-n_images // workers)))
    ranges = [(i, min(i + chunk, n_images)) for i in range(0, n_images, chunk)]
    files = entities = 0
    if workers == 1:
        for start, stop in ranges:
            f, e = _write_range(str(path), seed, start, stop, check, size)
            files, entities = files + f, entities + e
    else:
        with ProcessPoolExecutor(workers) as pool:
            futures = [pool.submit(_write_range, str(path), seed, a, b, check, size) for a, b in ranges]
            for fut in futures:
                f, e = fut.result()
                files, entities = files + f, entities + e
    return {"images": files, "entities": entities}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out_dir", type=Path)
    p.add_argument("--images", type=int, default=100, help="number of images (default 100)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--workers", type=int, default=None, help="processes (default: CPU count)")
    p.add_argument("--check", action="store_true",
                   help="verify each file equals json.dumps(indent=4) output (slow)")
    p.add_argument("--size", choices=("full", "small"), default="full",
                   help="full: ~2,700 items per image; small: ~110 (default full)")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    counts = generate_export(args.out_dir, args.images, args.seed, args.workers, args.check,
                             args.size)
    print(f"wrote {counts['images']} images, {counts['entities']} entities to {args.out_dir} "
          f"in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
