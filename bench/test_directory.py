"""bench/directory runs end to end in its --quick form (about 10 s) and reports every
figure, positive: a broken path shows up here rather than as a missing README row."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import needs_root

ROOT = Path(__file__).resolve().parent.parent


@needs_root
@pytest.mark.timeout(60)
def test_directory_bench_quick_run_reports_every_figure(tmp_path: Path) -> None:
    out = tmp_path / "directory.json"
    r = subprocess.run([sys.executable, "-m", "bench.directory", "--quick", "--out", str(out)],
                       cwd=ROOT, capture_output=True, text=True, timeout=50)
    assert r.returncode == 0, r.stderr[-3000:]
    doc = json.loads(out.read_text())
    figures = {
        "throughput_gbit_s": ["by_name", "loopback", "tap"],
        "getsockname_us": ["supervised_bypassed", "supervised_continued", "unsupervised"],
        "connect_rate_per_s": ["by_name", "loopback", "tap"],
    }
    if shutil.which("slirp4netns"):
        figures["throughput_gbit_s"].append("slirp4netns")
    for group, keys in figures.items():
        for key in keys:
            value = doc[group][key]
            assert isinstance(value, float) and value > 0, (group, key, value)
    # the by-name figures went through the supervisor, not around it
    assert doc["netstackd"]["bypassed_connects"] > 0
    assert doc["netstackd"]["accepts"] > 0
    assert doc["netstackd"]["errors"] == 0
    assert "| by name" in r.stdout  # the table follows the JSON
