"""Count the HTTP requests botocore sends, by operation (developer tool for the benchmark).

    python benchmarks/count_requests.py COUNTS.json SCRIPT [ARGS...]

runs SCRIPT as ``__main__`` with ARGS and, when it exits, writes ``{"BatchWriteItem": n, ...}``
to COUNTS.json.  Every request that goes on the wire counts, resends included (the tool makes
its own retries; botocore's are off in it).  ``install`` does the same inside this process
(the benchmark's floor uses it), so both sides are counted by the same code.
"""

from __future__ import annotations

import atexit
import json
import runpy
import sys
import threading
from collections import Counter
from pathlib import Path
from typing import Any

COUNTS: Counter[str] = Counter()
_LOCK = threading.Lock()


def install() -> Counter[str]:
    """Count from now on every request any botocore client of this process sends."""
    from botocore.endpoint import Endpoint

    # Endpoint._send is botocore's private hook for every HTTP request: a developer tool may
    # lean on it (the tool itself does not); the stubs do not declare it.
    send = getattr(Endpoint, "_send")  # noqa: B009
    if getattr(send, "counted", False):
        return COUNTS

    def counted_send(self: Any, request: Any) -> Any:
        target = request.headers.get("X-Amz-Target", b"")
        if isinstance(target, bytes):
            target = target.decode("ascii", "replace")
        with _LOCK:
            COUNTS[target.rpartition(".")[2] or "other"] += 1
        return send(self, request)

    counted_send.counted = True  # type: ignore[attr-defined]
    setattr(Endpoint, "_send", counted_send)  # noqa: B010
    return COUNTS


def main() -> None:
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    out, script = Path(sys.argv[1]), sys.argv[2]
    sys.argv = sys.argv[2:]
    install()
    atexit.register(lambda: out.write_text(json.dumps(dict(COUNTS), sort_keys=True)))
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main()
