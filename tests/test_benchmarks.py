"""The benchmark scripts run end to end at tiny sizes and print their ratio tables (so they cannot rot unnoticed)."""

import json
import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _run(script: str, *args: str) -> str:
    result = subprocess.run([sys.executable, str(BENCHMARKS / script), *args], check=False, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_loss_benchmark_tiny(tmp_path):
    out = _run("loss.py", "--shapes", "64x100", "--dtypes", "float32", "--candidates", "ce,hf_label_smoother,ours_maxsup",
               "--rounds", "1", "--repeats", "1", "--warmup", "1", "--threads", "1", "--json", str(tmp_path / "r.json"))
    assert "### logits 64×100 float32" in out, out
    for name in ("`F.cross_entropy` | ", "`LabelSmoother(0.1)` | ", "**ours MaxSup** | "):
        assert name in out, out
    results = json.loads((tmp_path / "r.json").read_text())["results"]
    assert sorted(results) == ["ce|64x100|float32", "hf_label_smoother|64x100|float32", "ours_maxsup|64x100|float32"]
    assert all(run["times"][0] > 0 for runs in results.values() for run in runs)


def test_trainer_benchmark_tiny():
    out = _run("trainer.py", "--vocab", "64", "--d_model", "16", "--layers", "1", "--steps", "1", "--shapes", "2x8")
    rows = [line for line in out.splitlines() if line.startswith("| ") and "steps/s |" not in line]
    assert len(rows) == 3, out
    stock = rows[0].split("|")
    assert stock[3].strip() == "1.00" and stock[5].strip() == "1.00", out
    for row in rows:
        assert float(row.split("|")[2]) > 0, out
