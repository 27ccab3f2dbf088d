"""Every benchmark under bench/ runs in its quick mode, so none can rot unnoticed.

Each `bench/X.py` (not starting with `_`) is run as a real process, as TEAM.md asks of every benchmark:
`python bench/X.py --quick --out TMP/X.json`. It must exit 0, write that file (and nothing into
bench/results/), and record its provenance (command, commit, machine, load) under "run".
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
RESULTS = BENCH / "results"

# Scripts whose quick mode cannot run in the suite, with the reason (none today).
OWNED_ELSEWHERE: dict[str, str] = {}
# Scripts that write the query sets other benchmarks read (JSON lines), checked for their rows instead.
QUERY_FILES = {"search_queries.py"}

SCRIPTS = sorted(p.name for p in BENCH.glob("*.py") if not p.name.startswith("_"))


def test_every_bench_script_is_covered():
    assert SCRIPTS, "no benchmark scripts found"
    assert set(SCRIPTS) >= set(OWNED_ELSEWHERE), "a skipped script no longer exists: drop it from OWNED_ELSEWHERE"


def _results_snapshot() -> dict[str, float]:
    return {p.name: p.stat().st_mtime for p in RESULTS.iterdir() if p.is_file()}


@pytest.mark.parametrize("script", SCRIPTS)
def test_bench_script_runs_quick(script, tmp_path, sample_catalog):
    if script in OWNED_ELSEWHERE:
        pytest.skip(f"bench/{script}: {OWNED_ELSEWHERE[script]}")
    out = tmp_path / f"{Path(script).stem}.json"
    before = _results_snapshot()
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, str(BENCH / script), "--quick", "--out", str(out)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"bench/{script} --quick failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    assert out.exists(), f"bench/{script} --quick wrote nothing to --out"
    assert _results_snapshot() == before, f"bench/{script} --quick wrote into bench/results/"
    if script in QUERY_FILES:  # a query set (JSON lines) for another benchmark, not a results file
        rows = [json.loads(line) for line in out.read_text().splitlines()]
        assert rows and all({"set", "query", "relevant"} <= set(r) for r in rows)
        assert any(r["relevant"] for r in rows)
        return
    body = json.loads(out.read_text())
    run = body["run"]
    assert run["command"].endswith(f"bench/{script} --quick --out {out}") and len(run["git_commit"]) == 40
    assert {"machine", "load_average_at_start", "load_average_at_end", "wall_seconds"} <= set(run)
    assert _results_snapshot() == before, f"bench/{script} --quick wrote into bench/results/"
