"""bench/cluster runs end to end in its --quick form (a few seconds) and reports every
figure, positive."""

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
def test_cluster_bench_quick_run_reports_every_figure(tmp_path: Path) -> None:
    if not shutil.which("etcd") or not shutil.which("iperf3"):
        pytest.skip("needs etcd (Debian etcd-server) and iperf3")
    out = tmp_path / "cluster.json"
    r = subprocess.run([sys.executable, "-m", "bench.cluster", "--quick", "--out", str(out)],
                       cwd=ROOT, capture_output=True, text=True, timeout=50)
    assert r.returncode == 0, r.stderr[-3000:]
    doc = json.loads(out.read_text())
    for key in ("by_name", "veth"):
        assert doc["throughput_gbit_s"][key] > 0, key
    vis = doc["visible_on_other_host_ms"]
    assert vis["count"] == 10 and 0 < vis["p50_ms"] <= vis["p99_ms"] <= vis["max_ms"] < 10000
    assert "| by name / raw veth |" in r.stdout
