"""The download benchmark (bench/run.py) at a tiny scale, so it cannot rot.

No speed assertions: timing belongs in bench/, not in tests. It checks that one command generates
the models, starts nginx and SeaweedFS, runs every tool, and prints a row for every scenario × tool,
and that modeldepot's own rows did not fail.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _bench_module():
    spec = importlib.util.spec_from_file_location("bench_run", REPO / "bench" / "run.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up while the class is built
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_bench_smoke_prints_every_row(tmp_path):
    if not (shutil.which("nginx") or Path("/usr/sbin/nginx").exists()):
        pytest.skip("nginx not installed (tests/deps/apt.txt)")
    out_json = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / "run.py"), "--scale", "0.005", "--repeat", "1",
         "--json", str(out_json), "--workdir", str(tmp_path / "work")],
        cwd=REPO, capture_output=True, text=True, timeout=1400,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    printed = set()
    for line in proc.stdout.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| ") and len(cells) == 7:
            printed.add((cells[0], cells[1]))
            if cells[1].startswith("modeldepot"):
                assert "FAILED" not in cells[6], line
    missing = [row for row in _bench_module().expected_rows() if row not in printed]
    assert not missing, f"rows missing from the table: {missing}\n{proc.stdout[-3000:]}"
    assert out_json.stat().st_size > 0
