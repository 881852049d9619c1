"""The CLI in dry-run mode, run as a subprocess with no AWS configuration at all.

Every run gets an environment without any ``AWS_*``/``BOTO*`` variable and a HOME that is an
empty directory, so no ``~/.aws`` can be read: a dry run without ``--table`` must not need
AWS. The few live runs here (config files naming the table) use DynamoDB Local.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from cli import BUCKET_FLAGS, CliResult, run_cli, summary_entities, summary_errors
from conftest import TableHandle
from exports import build_clones, copy_golden, mutate
from items import (
    DEV_EXPORT,
    GOLDEN_IDS,
    IMG_LEGACY,
    IMG_PLACE_EMPTY_ID,
    IMG_ROUNDING,
    assert_items_equal,
    assert_table_equals,
    by_key,
    entity_counts,
    load_expected,
    read_jsonl,
)
from servers import env_for_subprocess

DRY_RUN_LINE = "No records will be copied. Use --no-dry-run to actually copy."
EMPTY_IMAGE = "3f2b9c4e-8a1d-4e6f-9b2a-7c5d1e0f4a86"  # dev.export's image without receipts
ENTITY_ORDER = ["images", "lines", "words", "letters", "receipts", "receipt_lines", "receipt_words",
                "receipt_letters", "receipt_word_labels", "receipt_places", "receipt_metadatas",
                "receipt_barcodes", "ocr_jobs", "ocr_routing_decisions"]


@pytest.fixture
def home(tmp_path: Path) -> Path:
    path = tmp_path / "home"
    path.mkdir()
    return path


@pytest.fixture(scope="module")
def golden_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("golden") / "export"
    copy_golden(path)
    return path


def dry(args: list[Any], home: Path, env: dict[str, str] | None = None) -> CliResult:
    """A run with no AWS configuration at all (no credentials, an empty HOME)."""
    bare = env_for_subprocess(credentials=False, home=home, extra=env)
    result = run_cli(["--no-progress", *args], env=bare)
    assert "Traceback" not in result.stderr, result.stderr
    return result


def count_line(stdout: str, label: str) -> str:
    """The printed value of a summary line such as ``Images found:      5``."""
    m = re.search(rf"^{re.escape(label)}:\s+(\S+)$", stdout, re.M)
    assert m, f"no {label!r} line in:\n{stdout}"
    return m.group(1)


def check_header(stdout: str) -> None:
    lines = stdout.splitlines()
    assert lines[0] == "Mode: DRY RUN"
    assert DRY_RUN_LINE in lines
    assert "Mode: LIVE" not in stdout


def check_counts(stdout: str, *, found: int, copy: int, empty: int = 0, failed: int = 0,
                 items: int | None = None) -> None:
    assert count_line(stdout, "Images found") == f"{found:,}"
    assert count_line(stdout, "Would copy") == f"{copy:,}"
    assert count_line(stdout, "Skipped (no receipts)") == f"{empty:,}"
    assert count_line(stdout, "Failed") == f"{failed:,}"
    if items is not None:
        assert count_line(stdout, "Items to write") == f"{items:,}"


def printed_entities(expected: dict[Any, Any]) -> dict[str, str]:
    return {k: f"{n:,}" for k, n in entity_counts(expected.values()).items()}


# --------------------------------------------------------------------------- the golden export


def test_golden_dry_run(golden_export: Path, home: Path, tmp_path: Path) -> None:
    dump, report_path = tmp_path / "items.jsonl", tmp_path / "report.json"
    result = dry(["--export-dir", golden_export, *BUCKET_FLAGS, "--dump-items", dump,
                  "--report", report_path], home)
    assert result.returncode == 0, result.output
    check_header(result.stdout)
    expected = load_expected()
    check_counts(result.stdout, found=5, copy=5, items=len(expected))
    assert count_line(result.stdout, "Items to write") == "756"
    entities = summary_entities(result.stdout)
    assert entities == printed_entities(expected)
    assert "  receipt_words: 205" in result.stdout.splitlines()
    assert list(entities) == [k for k in ENTITY_ORDER if k in entities]
    assert summary_errors(result.stdout) == []
    assert "ERROR" not in result.stderr and "WARNING" not in result.stderr

    # --dump-items: exactly the golden items, each exactly once
    dumped = read_jsonl(dump)
    assert len(dumped) == len(expected)
    assert_items_equal(by_key(dumped), expected)

    report = json.loads(report_path.read_text(encoding="utf-8"))
    assert report["mode"] == "dry-run"
    assert {k: report["images"][k] for k in ("total", "copied", "skipped_existing", "skipped_empty",
                                             "failed")} == {"total": 5, "copied": 5, "skipped_existing": 0,
                                                            "skipped_empty": 0, "failed": 0}
    assert report["entities"] == entity_counts(expected.values())
    assert report["items"]["planned"] == 756
    assert report["items"].get("written", 0) == 0
    assert report["excluded"] == {}
    assert report["errors"] == []


def test_dry_run_output_is_deterministic(golden_export: Path, home: Path, tmp_path: Path) -> None:
    a = dry(["--export-dir", golden_export, *BUCKET_FLAGS, "--dump-items", tmp_path / "a"], home)
    b = dry(["--export-dir", golden_export, *BUCKET_FLAGS, "--dump-items", tmp_path / "b"], home)
    assert without_timing(a.stdout) == without_timing(b.stdout)
    assert sorted(read_jsonl(tmp_path / "a"), key=json.dumps) == sorted(read_jsonl(tmp_path / "b"),
                                                                        key=json.dumps)


def test_dry_run_is_the_default_and_explicit_flag_agrees(golden_export: Path, home: Path) -> None:
    default = dry(["--export-dir", golden_export, *BUCKET_FLAGS], home)
    explicit = dry(["--export-dir", golden_export, *BUCKET_FLAGS, "--dry-run"], home)
    assert default.returncode == explicit.returncode == 0
    assert without_timing(default.stdout) == without_timing(explicit.stdout)
    check_header(default.stdout)


def test_dry_run_without_bucket_names_warns_and_keeps_dev_names(golden_export: Path, home: Path,
                                                                 tmp_path: Path) -> None:
    dump = tmp_path / "items.jsonl"
    result = dry(["--export-dir", golden_export, "--dump-items", dump], home)
    assert result.returncode == 0, result.output
    assert "not rewritten" in result.stdout
    assert "WARNING" in result.stderr and "bucket" in result.stderr
    images = [i for i in read_jsonl(dump) if i["TYPE"]["S"] == "IMAGE"]
    assert {i["raw_s3_bucket"]["S"] for i in images} == {"dev-raw-bucket"}


# --------------------------------------------------------------------------- the bundled dev.export


def test_bundled_dev_export(home: Path, tmp_path: Path) -> None:
    dump, report_path = tmp_path / "items.jsonl", tmp_path / "report.json"
    result = dry(["--export-dir", DEV_EXPORT, *BUCKET_FLAGS, "--dump-items", dump, "--report", report_path],
                 home)
    assert result.returncode == 0, result.output
    check_header(result.stdout)
    expected = load_expected([IMG_PLACE_EMPTY_ID, IMG_LEGACY])
    check_counts(result.stdout, found=3, copy=2, empty=1, items=len(expected))
    assert summary_entities(result.stdout) == printed_entities(expected)
    assert_items_equal(by_key(read_jsonl(dump)), expected)
    report = json.loads(report_path.read_text(encoding="utf-8"))
    assert report["images"]["skipped_empty"] == 1 and report["images"]["copied"] == 2
    assert report["entities"] == entity_counts(expected.values())


def test_bundled_dev_export_include_empty(home: Path, tmp_path: Path) -> None:
    dump, report_path = tmp_path / "items.jsonl", tmp_path / "report.json"
    result = dry(["--export-dir", DEV_EXPORT, *BUCKET_FLAGS, "--include-empty", "--dump-items", dump,
                  "--report", report_path], home)
    assert result.returncode == 0, result.output
    dumped = by_key(read_jsonl(dump))
    empty_items = {k: v for k, v in dumped.items() if k[0] == f"IMAGE#{EMPTY_IMAGE}"}
    # the image without receipts: image, lines, words, letters, OCR job and routing decision
    assert {v["TYPE"]["S"] for v in empty_items.values()} == {
        "IMAGE", "LINE", "WORD", "LETTER", "OCR_JOB", "OCR_ROUTING_DECISION"}
    assert len(empty_items) == 1 + 11 + 12 + 5 + 1 + 1
    image = empty_items[(f"IMAGE#{EMPTY_IMAGE}", "IMAGE")]
    assert image["raw_s3_bucket"] == {"S": "prod-raw-bucket"}
    rest = {k: v for k, v in dumped.items() if k[0] != f"IMAGE#{EMPTY_IMAGE}"}
    assert_items_equal(rest, load_expected([IMG_PLACE_EMPTY_ID, IMG_LEGACY]))
    check_counts(result.stdout, found=3, copy=3, empty=0, items=len(dumped))
    report = json.loads(report_path.read_text(encoding="utf-8"))
    assert report["images"]["copied"] == 3 and report["images"]["skipped_empty"] == 0
    assert report["items"]["planned"] == len(dumped)


# --------------------------------------------------------------------------- big counts


def test_thousands_separators(home: Path, tmp_path: Path) -> None:
    """14 copies of a golden image under new ids: counts >= 1,000 print with separators."""
    export = tmp_path / "export"
    expected = build_clones(export, IMG_ROUNDING, 14)
    dump, report_path = tmp_path / "items.jsonl", tmp_path / "report.json"
    result = dry(["--export-dir", export, *BUCKET_FLAGS, "--dump-items", dump, "--report", report_path],
                 home)
    assert result.returncode == 0, result.output
    assert len(expected) == 14 * 274 == 3836
    check_counts(result.stdout, found=14, copy=14, items=3836)
    assert count_line(result.stdout, "Items to write") == "3,836"
    lines = result.stdout.splitlines()
    assert "  receipt_words: 1,050" in lines
    assert "  receipt_lines: 420" in lines
    entities = summary_entities(result.stdout)
    assert entities == printed_entities(expected)
    assert_items_equal(by_key(read_jsonl(dump)), expected)
    report = json.loads(report_path.read_text(encoding="utf-8"))
    assert report["entities"]["receipt_words"] == 1050  # plain numbers in JSON
    assert report["items"]["planned"] == 3836


# --------------------------------------------------------------------------- exit codes


def test_one_bad_image_exit_1_others_counted(golden_export: Path, home: Path, tmp_path: Path) -> None:
    export = tmp_path / "export"
    copy_golden(export)
    bad_id = "0badbad0-0000-4000-8000-000000000001"
    bad = copy_golden(tmp_path / "src", [IMG_LEGACY])[0]
    text = bad.read_text(encoding="utf-8").replace(IMG_LEGACY, bad_id)
    bad_path = export / f"{bad_id}.json"
    bad_path.write_text(text, encoding="utf-8")
    mutate(bad_path, lambda d: d["receipt_words"][3].update(word_id=1.0))
    dump, report_path = tmp_path / "items.jsonl", tmp_path / "report.json"
    result = dry(["--export-dir", export, *BUCKET_FLAGS, "--dump-items", dump, "--report", report_path],
                 home)
    assert result.returncode == 1, result.output
    check_header(result.stdout)
    check_counts(result.stdout, found=6, copy=5, failed=1, items=756)
    assert summary_entities(result.stdout) == printed_entities(load_expected())
    errors = summary_errors(result.stdout)
    assert len(errors) == 1 and errors[0].startswith(f"{bad_id}.json")
    assert "receipt_words[3]" in errors[0] and "'word_id'" in errors[0]
    assert_items_equal(by_key(read_jsonl(dump)), load_expected())

    report = json.loads(report_path.read_text(encoding="utf-8"))
    assert report["images"]["failed"] == 1 and report["images"]["copied"] == 5
    assert len(report["errors"]) == 1
    error = report["errors"][0]
    assert {k: error[k] for k in ("file", "entity", "index", "field")} == {
        "file": f"{bad_id}.json", "entity": "receipt_words", "index": 3, "field": "word_id"}
    assert error["message"]


@pytest.mark.parametrize("args,message", [
    (["--frobnicate"], "unrecognized arguments"),
    (["--export-dir", "{tmp}/no-such-dir"], "export directory not found"),
    (["--export-dir", "{golden}", "--no-dry-run", "--yes", *BUCKET_FLAGS], "table"),
    (["--export-dir", "{golden}", "--no-dry-run", *BUCKET_FLAGS], "table"),
    (["--export-dir", "{golden}", "--dev-raw-bucket", "dev-raw-bucket"], "bucket"),
    (["--export-dir", "{golden}", "--dev-config", "{tmp}/missing.json"], "missing.json"),
    (["--export-dir", "{golden}", "--dry-run", "--no-dry-run"], "not allowed"),
    (["--export-dir", "{golden}", *BUCKET_FLAGS, "--limit", "0"], "--limit must be at least 1"),
], ids=["unknown_flag", "missing_export_dir", "live_without_table", "live_without_table_or_yes",
        "half_a_bucket_pair", "missing_config_file", "dry_and_live", "limit_0"])
def test_usage_errors_exit_2(args: list[str], message: str, golden_export: Path, home: Path,
                             tmp_path: Path) -> None:
    args = [a.format(tmp=tmp_path, golden=golden_export) for a in args]
    result = dry(args, home)
    assert result.returncode == 2, result.output
    assert message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert "Mode: LIVE" not in result.stdout


def test_help_examples_are_one_command_per_line_or_continued(home: Path) -> None:
    """A lone backslash in the epilog's source joins two example lines into one garbled line."""
    result = run_cli(["--help"])
    assert result.returncode == 0, result.describe()
    commands = [line for line in result.stdout.splitlines() if line.startswith("  .venv/bin/python")]
    assert len(commands) >= 5, result.stdout
    joined = [line for line in commands if re.search(r"\S {2,}--\w", line)]
    assert not joined, joined


def test_dry_run_limit_says_live_runs_copy_the_rest(golden_export: Path, home: Path) -> None:
    """Running the same dry run again shows the same plan: the note is for the live runs."""
    result = dry(["--export-dir", golden_export, *BUCKET_FLAGS, "--limit", "1"], home)
    assert result.returncode == 0, result.output
    line = next(x for x in result.stdout.splitlines() if x.startswith("Left for later (--limit):"))
    assert line.endswith("each live run copies the next ones"), line


def test_export_dir_is_a_file_exit_2(golden_export: Path, home: Path) -> None:
    result = dry(["--export-dir", golden_export / f"{IMG_LEGACY}.json"], home)
    assert result.returncode == 2, result.output
    assert "is a file, not a directory" in result.stderr, result.stderr


def test_empty_export_dir(home: Path, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    result = dry(["--export-dir", tmp_path / "empty", *BUCKET_FLAGS], home)
    assert result.returncode == 0, result.output
    check_counts(result.stdout, found=0, copy=0, items=0)


def test_non_json_files_are_not_images(golden_export: Path, home: Path, tmp_path: Path) -> None:
    """Other names are not images; an entry named like one that is no file (here a
    directory) is an image the operator expects, so it is found and fails (issue 14)."""
    export = tmp_path / "export"
    copy_golden(export, [IMG_LEGACY])
    (export / "README.txt").write_text("not an export")
    (export / "sub.json").mkdir()
    result = dry(["--export-dir", export, *BUCKET_FLAGS], home)
    assert result.returncode == 1, result.output
    check_counts(result.stdout, found=2, copy=1, failed=1)
    assert "sub.json: not a regular file: a directory" in result.stdout


# --------------------------------------------------------------------------- configuration


def write_json(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def pulumi(tmp_path: Path, name: str, **outputs: Any) -> Path:
    """A `pulumi stack output --json` file (with some unrelated outputs, as real stacks have)."""
    data = {"api_url": "https://example.invalid", "lambda_arns": ["a", "b"], "replicas": 3, **outputs}
    return write_json(tmp_path / f"{name}.json", data)


def golden_dump(result: CliResult, dump: Path) -> None:
    assert result.returncode == 0, result.output
    assert_items_equal(by_key(read_jsonl(dump)), load_expected())


def test_pulumi_config_files_name_the_buckets(golden_export: Path, home: Path, tmp_path: Path) -> None:
    dev = pulumi(tmp_path, "dev", dynamodb_table_name="ReceiptsTable-dev-1a2b",
                 raw_bucket_name="dev-raw-bucket", cdn_bucket_name="dev-cdn-bucket")
    prod = pulumi(tmp_path, "prod", raw_bucket_name="prod-raw-bucket", cdn_bucket_name="prod-cdn-bucket")
    dump = tmp_path / "items.jsonl"
    result = dry(["--export-dir", golden_export, "--dev-config", dev, "--prod-config", prod,
                  "--dump-items", dump], home)
    golden_dump(result, dump)
    assert "dev-raw-bucket -> prod-raw-bucket" in result.stdout
    assert "dev-cdn-bucket -> prod-cdn-bucket" in result.stdout
    # prod.json names no table: the one warning says so, naming the file and the key.
    warnings = [line for line in result.stderr.splitlines() if line.startswith("WARNING")]
    assert len(warnings) == 1 and "prod.json has no 'dynamodb_table_name'" in warnings[0], result.stderr


def test_flags_win_over_config_files(golden_export: Path, home: Path, tmp_path: Path) -> None:
    dev = pulumi(tmp_path, "dev", raw_bucket_name="other-dev-raw", cdn_bucket_name="other-dev-cdn")
    prod = pulumi(tmp_path, "prod", raw_bucket_name="wrong-raw", cdn_bucket_name="wrong-cdn")
    dump = tmp_path / "items.jsonl"
    result = dry(["--export-dir", golden_export, "--dev-config", dev, "--prod-config", prod,
                  *BUCKET_FLAGS, "--dump-items", dump], home)
    golden_dump(result, dump)
    assert "wrong-raw" not in result.stdout and "other-dev-raw" not in result.stdout


def test_flags_win_for_one_value_config_gives_the_rest(golden_export: Path, home: Path,
                                                       tmp_path: Path) -> None:
    dev = pulumi(tmp_path, "dev", raw_bucket_name="dev-raw-bucket", cdn_bucket_name="dev-cdn-bucket")
    prod = pulumi(tmp_path, "prod", raw_bucket_name="wrong-raw", cdn_bucket_name="prod-cdn-bucket")
    dump = tmp_path / "items.jsonl"
    result = dry(["--export-dir", golden_export, "--dev-config", dev, "--prod-config", prod,
                  "--prod-raw-bucket", "prod-raw-bucket", "--dump-items", dump], home)
    golden_dump(result, dump)


def test_config_files_win_over_environment(golden_export: Path, home: Path, tmp_path: Path) -> None:
    dev = pulumi(tmp_path, "dev", raw_bucket_name="dev-raw-bucket", cdn_bucket_name="dev-cdn-bucket")
    prod = pulumi(tmp_path, "prod", raw_bucket_name="prod-raw-bucket", cdn_bucket_name="prod-cdn-bucket")
    env = {"DEV_RAW_BUCKET": "env-dev-raw", "PROD_RAW_BUCKET": "env-prod-raw",
           "DEV_CDN_BUCKET": "env-dev-cdn", "PROD_CDN_BUCKET": "env-prod-cdn"}
    dump = tmp_path / "items.jsonl"
    result = dry(["--export-dir", golden_export, "--dev-config", dev, "--prod-config", prod,
                  "--dump-items", dump], home, env)
    golden_dump(result, dump)


def test_environment_names_the_buckets(golden_export: Path, home: Path, tmp_path: Path) -> None:
    env = {"DEV_RAW_BUCKET": "dev-raw-bucket", "PROD_RAW_BUCKET": "prod-raw-bucket",
           "DEV_CDN_BUCKET": "dev-cdn-bucket", "PROD_CDN_BUCKET": "prod-cdn-bucket"}
    dump = tmp_path / "items.jsonl"
    golden_dump(dry(["--export-dir", golden_export, "--dump-items", dump], home, env), dump)


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", ""])
def test_unreadable_config_file_exit_2(content: str, golden_export: Path, home: Path, tmp_path: Path) -> None:
    path = tmp_path / "prod.json"
    path.write_text(content, encoding="utf-8")
    result = dry(["--export-dir", golden_export, "--prod-config", path], home)
    assert result.returncode == 2, result.output
    assert "prod.json" in result.stderr


def live_env(home: Path) -> dict[str, str]:
    return env_for_subprocess(home=home)


def test_prod_config_names_the_table_for_a_live_run(ddblocal_table: TableHandle, home: Path,
                                                    tmp_path: Path) -> None:
    export = tmp_path / "export"
    copy_golden(export, [IMG_LEGACY])
    dev = pulumi(tmp_path, "dev", dynamodb_table_name="ReceiptsTable-dev-1a2b",
                 raw_bucket_name="dev-raw-bucket", cdn_bucket_name="dev-cdn-bucket")
    prod = pulumi(tmp_path, "prod", dynamodb_table_name=ddblocal_table.name,
                  raw_bucket_name="prod-raw-bucket", cdn_bucket_name="prod-cdn-bucket")
    result = run_cli(["--export-dir", export, "--dev-config", dev, "--prod-config", prod, "--no-dry-run",
                      "--yes", "--endpoint-url", ddblocal_table.url, "--region", "us-east-1",
                      "--no-progress"], env=live_env(home))
    assert result.returncode == 0, result.output
    assert f"Prod table: {ddblocal_table.name}" in result.stdout
    assert_table_equals(ddblocal_table.client, ddblocal_table.name, load_expected([IMG_LEGACY]))


def test_table_flag_wins_over_prod_config(ddblocal_table: TableHandle, home: Path, tmp_path: Path) -> None:
    export = tmp_path / "export"
    copy_golden(export, [IMG_LEGACY])
    prod = pulumi(tmp_path, "prod", dynamodb_table_name="receipts-not-this-one",
                  raw_bucket_name="prod-raw-bucket", cdn_bucket_name="prod-cdn-bucket")
    result = run_cli(["--export-dir", export, "--prod-config", prod, "--table", ddblocal_table.name,
                      "--dev-raw-bucket", "dev-raw-bucket", "--dev-cdn-bucket", "dev-cdn-bucket",
                      "--no-dry-run", "--yes", "--endpoint-url", ddblocal_table.url, "--region", "us-east-1",
                      "--no-progress"], env=live_env(home))
    assert result.returncode == 0, result.output
    assert "receipts-not-this-one" not in result.stdout
    assert_table_equals(ddblocal_table.client, ddblocal_table.name, load_expected([IMG_LEGACY]))


def test_golden_ids_are_the_fixture_set() -> None:
    assert len(GOLDEN_IDS) == 5


BAD_FILES = {
    "invalid_json": lambda b: b[: len(b) // 3],
    "not_utf8": lambda b: b.replace(b'"text": "', b'"text": "\xff', 1),
    "nan": lambda b: re.sub(rb'"confidence": [0-9.]+', b'"confidence": NaN', b, count=1),
    "lone_surrogate_escape": lambda b: b.replace(b'"text": "', b'"text": "\\ud800', 1),
    "deeply_nested_json": lambda b: b.replace(b'"ocr_jobs": [', b'"ocr_jobs": [' + b"[" * 100_000
                                              + b"]" * 100_000 + b",", 1),
    "unknown_list": lambda b: b.replace(b'"images": [', b'"receipt_summaries": [], "images": [', 1),
}


@pytest.mark.parametrize("kind", sorted(BAD_FILES))
def test_a_bad_file_never_stops_the_run(kind: str, home: Path, tmp_path: Path) -> None:
    """Whatever is wrong with one file, the run goes on: the other images are counted and
    dumped, the bad one is one error line, exit 1, no traceback."""
    export = tmp_path / "export"
    copy_golden(export, [IMG_PLACE_EMPTY_ID, IMG_LEGACY])
    bad_id = "0badbad0-0000-4000-8000-000000000002"
    src = copy_golden(tmp_path / "src", [IMG_ROUNDING])[0].read_bytes().replace(
        IMG_ROUNDING.encode(), bad_id.encode())
    (export / f"{bad_id}.json").write_bytes(BAD_FILES[kind](src))
    dump, report_path = tmp_path / "items.jsonl", tmp_path / "report.json"
    result = run_cli(["--no-progress", "--export-dir", export, *BUCKET_FLAGS, "--dump-items", dump,
                      "--report", report_path], env=env_for_subprocess(credentials=False, home=home))
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert result.returncode == 1, result.output[-3000:]
    expected = load_expected([IMG_PLACE_EMPTY_ID, IMG_LEGACY])
    check_counts(result.stdout, found=3, copy=2, failed=1, items=len(expected))
    errors = summary_errors(result.stdout)
    assert len(errors) == 1 and errors[0].startswith(f"{bad_id}.json"), result.stdout
    assert_items_equal(by_key(read_jsonl(dump)), expected)
    report = json.loads(report_path.read_text(encoding="utf-8"))
    assert [e["file"] for e in report["errors"]] == [f"{bad_id}.json"]


def without_timing(stdout: str) -> str:
    """The summary without its one line that measures time."""
    return re.sub(r"(?m)^Elapsed .*$", "", stdout)
