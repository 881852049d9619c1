"""The tool runs on Python 3.10 to 3.13: a dry run needs only the standard library, so
every interpreter found on this machine must turn the golden exports into the golden items."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = ROOT / "tests" / "fixtures" / "golden"
BUCKETS = ["--dev-raw-bucket", "dev-raw-bucket", "--prod-raw-bucket", "prod-raw-bucket",
           "--dev-cdn-bucket", "dev-cdn-bucket", "--prod-cdn-bucket", "prod-cdn-bucket"]
VERSIONS = ["3.10", "3.11", "3.12", "3.13"]


def expected_items() -> dict[tuple[str, str], dict]:
    items = {}
    for path in sorted((GOLDEN / "expected").glob("*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            item = json.loads(line)
            items[(item["PK"]["S"], item["SK"]["S"])] = item
    return items


def interpreter(version: str) -> str | None:
    """This interpreter, a pyenv installation (its shims need PYENV_VERSION), or PATH."""
    if sys.version_info[:2] == tuple(int(x) for x in version.split(".")):
        return sys.executable
    for candidate in sorted(Path.home().glob(f".pyenv/versions/{version}.*/bin/python{version}")):
        return str(candidate)
    return shutil.which(f"python{version}")


@pytest.mark.parametrize("version", VERSIONS)
def test_golden_dry_run_on_every_python(version: str, tmp_path: Path) -> None:
    python = interpreter(version)
    if python is None:
        pytest.skip(f"python{version} is not installed here")
    probe = subprocess.run([python, "-c", "import sys; print(sys.version_info[:2])"],
                           capture_output=True, text=True, check=False)
    if probe.returncode != 0:
        pytest.skip(f"python{version} does not run here: {probe.stderr.strip()[:200]}")
    dump = tmp_path / "items.jsonl"
    result = subprocess.run(
        [python, str(ROOT / "copy_dynamodb_dev_to_prod.py"), "--dry-run", "--no-progress",
         "--export-dir", str(GOLDEN / "export"), "--dump-items", str(dump), *BUCKETS],
        capture_output=True, text=True, check=False, timeout=120, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    got = {}
    for line in dump.read_text(encoding="utf-8").splitlines():
        item = json.loads(line)
        got[(item["PK"]["S"], item["SK"]["S"])] = item
    assert got == expected_items()
