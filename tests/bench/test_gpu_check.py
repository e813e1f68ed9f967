"""bench/gpu_check.sh in its CPU dry-run form: the same steps as on a GPU (generate, ingest, `metazoo train`
in fp32 and bf16 precision settings, bench/layers.py eager against compiled), tiny, so the script cannot
rot while no GPU is around."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.ray, pytest.mark.ci]  # about 2 minutes: CI runs it after the default suite

ROOT = Path(__file__).resolve().parents[2]


def test_gpu_check_dry_run_writes_its_figures(tmp_path):
    env = dict(os.environ, PYTHON=sys.executable)
    env.pop("RAY_ADDRESS", None)  # each CLI command starts (and stops) its own local Ray
    proc = subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh"), "--dry-run", "--out", str(tmp_path)],
                          env=env, capture_output=True, text=True, timeout=1200)
    logs = {p.name: p.read_text()[-3000:] for p in tmp_path.glob("*.log")}
    assert proc.returncode == 0, (proc.stderr[-3000:], logs)
    figures = (tmp_path / "figures.txt").read_text()
    assert "generate: 12 digits-cnn networks" in figures and "ingest:" in figures
    for run in ("fp32", "bf16"):
        row = re.search(rf"^{run}\s+(\S+)\s+(\S+)", figures, re.MULTILINE)
        assert row, figures
        assert float(row.group(1)) > 0 and 0 <= float(row.group(2)) <= 1  # networks/s, data-wait fraction
    # bench/layers.py ran both models eager and compiled, with a finite speed-up column
    for model in ("statnet", "np"):
        row = re.search(rf"^{model}\s+.*\s(\d+\.\d+)$", figures, re.MULTILINE)
        assert row and float(row.group(1)) > 0, figures
        share = re.search(rf"^profile {model}: matrix products (\d+)% of self time", figures, re.MULTILINE)
        assert share and 0 <= int(share.group(1)) <= 100, figures
    assert "done; figures in" in figures
