"""The tool runs on Python 3.10 to 3.13: a dry run needs only the standard library, so
every interpreter found on this machine must turn the golden exports into the golden items."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = ROOT / "tests" / "fixtures" / "golden"
BUCKETS = ["--dev-raw-bucket", "dev-raw-bucket", "--prod-raw-bucket", "prod-raw-bucket",
           "--dev-cdn-bucket", "dev-cdn-bucket", "--prod-cdn-bucket", "prod-cdn-bucket"]
VERSIONS = ["3.10", "3.11", "3.12", "3.13"]  # the README's promise: "Needs Python 3.10–3.13"
PYENV_HINT = "$PYENV_ROOT, `pyenv root`, ~/.pyenv"


def expected_items() -> dict[tuple[str, str], dict]:
    items = {}
    for path in sorted((GOLDEN / "expected").glob("*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            item = json.loads(line)
            items[(item["PK"]["S"], item["SK"]["S"])] = item
    return items


def pyenv_roots(environ: Mapping[str, str]) -> list[Path]:
    """Where pyenv keeps its versions: $PYENV_ROOT, `pyenv root`, then ~/.pyenv (pyenv's default)."""
    roots = [Path(environ["PYENV_ROOT"])] if environ.get("PYENV_ROOT") else []
    pyenv = shutil.which("pyenv", path=environ.get("PATH"))
    if pyenv:
        done = subprocess.run([pyenv, "root"], capture_output=True, text=True, check=False, timeout=30,
                              env=dict(environ))
        if done.returncode == 0 and done.stdout.strip():
            roots.append(Path(done.stdout.strip()))
    home = environ.get("HOME")
    roots.append(Path(home) / ".pyenv" if home else Path.home() / ".pyenv")
    return list(dict.fromkeys(roots))


def interpreter(version: str, environ: Mapping[str, str] = os.environ) -> str | None:
    """This interpreter, a pyenv installation (the newest patch release; called directly, not
    through a shim, which would need PYENV_VERSION), or python3.X on PATH."""
    if sys.version_info[:2] == tuple(int(x) for x in version.split(".")):
        return sys.executable
    for root in pyenv_roots(environ):
        found = sorted(root.glob(f"versions/{version}.*/bin/python{version}"),
                       key=lambda p: [int(x) if x.isdigit() else -1 for x in p.parts[-3].split(".")])
        if found:
            return str(found[-1])
    shim_dirs = {str(root / "shims") for root in pyenv_roots(environ)}
    path = os.pathsep.join(d for d in environ.get("PATH", "").split(os.pathsep) if d not in shim_dirs)
    return shutil.which(f"python{version}", path=path)


def unavailable(version: str, reason: str) -> None:
    """CI promises every version (REQUIRE_ALL_PYTHONS=1 in .ci/run): there a missing one fails."""
    if os.environ.get("REQUIRE_ALL_PYTHONS"):
        pytest.fail(f"REQUIRE_ALL_PYTHONS is set but {reason}; install it (e.g. pyenv install {version}) "
                    "or change the promise in the README")
    pytest.skip(reason)


def test_pyenv_root_is_honoured(tmp_path: Path) -> None:
    """pyenv users who moved PYENV_ROOT (HOME elsewhere, no pyenv on PATH) are found too, and the
    newest patch release is the one used."""
    other = next(v for v in VERSIONS if sys.version_info[:2] != tuple(int(x) for x in v.split(".")))
    root = tmp_path / "pyenv"
    for patch in ("1", "10", "9"):
        bin_dir = root / "versions" / f"{other}.{patch}" / "bin"
        bin_dir.mkdir(parents=True)
        (bin_dir / f"python{other}").write_text("")
    environ = {"PYENV_ROOT": str(root), "HOME": str(tmp_path / "home"), "PATH": str(tmp_path / "empty")}
    assert interpreter(other, environ) == str(root / "versions" / f"{other}.10" / "bin" / f"python{other}")


@pytest.mark.parametrize("version", VERSIONS)
def test_golden_dry_run_on_every_python(version: str, tmp_path: Path) -> None:
    python = interpreter(version)
    if python is None:
        unavailable(version, f"python{version} is not installed here (looked in {PYENV_HINT} and PATH)")
        return
    probe = subprocess.run([python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                           capture_output=True, text=True, check=False)
    if probe.returncode != 0 or probe.stdout.strip() != version:
        unavailable(version, f"{python} does not run as Python {version}: "
                             f"{(probe.stderr or probe.stdout).strip()[:200]}")
        return
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


def test_ci_fails_when_a_promised_version_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REQUIRE_ALL_PYTHONS", "1")
    with pytest.raises(pytest.fail.Exception):
        unavailable("3.10", "python3.10 is not installed here")
    monkeypatch.delenv("REQUIRE_ALL_PYTHONS")
    with pytest.raises(pytest.skip.Exception):
        unavailable("3.10", "python3.10 is not installed here")
