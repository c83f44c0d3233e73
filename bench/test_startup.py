"""bench/startup runs (one launch per system) and reads its import trace; the timing
targets live in the bench's figures, not here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.startup import import_costs, top_imports
from tests.conftest import needs_root

ROOT = Path(__file__).resolve().parent.parent

TRACE = """import time: self [us] | cumulative | imported package
import time:       300 |        300 |     _ssl
import time:      1000 |       1300 |   ssl
import time:       500 |       1800 | asyncio
import time:        50 |         50 | netstack
"""


def test_import_trace_is_read_with_depth_and_costliest_first() -> None:
    rows = import_costs(TRACE)
    assert rows[0] == (300, 300, 2, "_ssl") and rows[2] == (1800, 500, 0, "asyncio")
    assert top_imports(rows, 2, depth=1) == ["    1.8 ms  asyncio", "    1.3 ms    ssl"]


@needs_root
@pytest.mark.timeout(60)
def test_startup_probe_runs(tmp_path: Path) -> None:
    out = tmp_path / "startup.json"
    systems = "netstack,slirp4netns" if Path("/usr/bin/slirp4netns").exists() else "netstack"
    r = subprocess.run(
        [sys.executable, "-m", "bench.startup", "--runs", "1", "--systems", systems,
         "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=50,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    doc = json.loads(out.read_text())
    for figures in doc["systems"].values():
        assert figures["ready_ms"] > 0 and figures["rss_idle_mib"] > 0
    assert doc["imports"]["modules"] > 0
    assert "netstack.host.runtime" in r.stdout  # the import costs follow the table
