"""The benchmark scripts run end to end at tiny sizes and print their ratio tables (so they cannot rot unnoticed)."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _run(script: str, *args: str, ok: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), *args], check=False, capture_output=True, text=True, timeout=600
    )
    if ok:
        assert result.returncode == 0, result.stderr[-3000:]
    return result


def _tiny(tmp_path, shapes: str, candidates: str) -> list[str]:
    """The flags of one tiny round: one process per job, one timed iteration, one thread, a JSON report."""
    flags = {"shapes": shapes, "candidates": candidates, "rounds": 1, "repeats": 1, "threads": 1}
    flags["json"] = tmp_path / "r.json"
    return [item for name, value in flags.items() for item in (f"--{name}", str(value))]


def _table_rows(out: str) -> dict[str, list[str]]:
    """The rows of the Markdown tables in `out`, by their first cell, as lists of stripped cells."""
    cells = [
        [c.strip() for c in line.strip().strip("|").split("|")] for line in out.splitlines() if line.startswith("| ")
    ]
    return {row[0]: row for row in cells}


def _load_loss_benchmark():
    spec = importlib.util.spec_from_file_location("_loss_benchmark", BENCHMARKS / "loss.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_loss_benchmark_tiny(tmp_path):
    candidates = "ce,hf_label_smoother,ours_maxsup,ours_maxsup_torch,liger_ls"
    out = _run("loss.py", *_tiny(tmp_path, "64x100", candidates), "--dtypes", "float32", "--warmup", "1").stdout
    assert "### logits 64×100 float32" in out, out
    rows = _table_rows(out)
    for name in ("`F.cross_entropy`", "transformers `LabelSmoother(0.1)`", "**ours MaxSup**"):
        assert name in rows, out
    # the backend column says what served the row: the forced torch backend, nothing for non-hf_maxsup rows
    assert rows["**ours MaxSup, torch backend**"][1] == "torch", out
    assert rows["**ours MaxSup**"][1] in ("c", "triton", "torch"), out
    assert rows["`F.cross_entropy`"][1] == "—" and rows["`F.cross_entropy`"][3] == "1.00", out
    assert "skipped: GPU only" in rows["Liger `LigerCrossEntropyLoss(label_smoothing=0.1)`"][2], out
    report = json.loads((tmp_path / "r.json").read_text())
    assert sorted(report["results"]) == [
        "ce|64x100|float32",
        "hf_label_smoother|64x100|float32",
        "ours_maxsup_torch|64x100|float32",
        "ours_maxsup|64x100|float32",
    ]
    assert all(run["times"][0] > 0 for runs in report["results"].values() for run in runs)
    assert report["summary"]["ours_maxsup_torch|64x100|float32"]["backend"] == "torch"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message given when there is no GPU")
def test_loss_benchmark_cuda_without_gpu():
    result = _run("loss.py", "--device", "cuda", "--rounds", "1", ok=False)
    assert result.returncode != 0
    assert "torch sees no CUDA GPU" in result.stderr, result.stderr
    assert "###" not in result.stdout  # it stops before running any job


def test_floor_ms():
    floor_ms = _load_loss_benchmark().floor_ms
    # 4x512x32000 fp32 logits: 262,144,000 bytes read + as many written at 1000 GB/s = 0.524288 ms
    assert floor_ms(262_144_000, 262_144_000, 1000.0) == pytest.approx(0.524288)
    # 1 GB read + 1 GB written at 4000 GB/s: 0.5 ms; halving the bandwidth doubles it
    assert floor_ms(10**9, 10**9, 4000.0) == pytest.approx(0.5)
    assert floor_ms(10**9, 10**9, 2000.0) == pytest.approx(1.0)
    assert floor_ms(3 * 10**9, 0, 3000.0) == pytest.approx(1.0)


def test_loss_benchmark_gpu_table(capsys):
    # the GPU report cannot run here: feed it the results two GPU children would print
    bench = _load_loss_benchmark()
    nbytes = 8 * 1024 * 32000 * 2

    def child(ms, gb_s, backend):
        return {
            "times": [ms / 1e3],
            "first": ms / 1e3,
            "extra_bytes": nbytes,
            "extra_exact": True,
            "logits_bytes": nbytes,
            "bandwidth_gb_s": gb_s,
            "device_name": "GPU",
            "backend": backend,
            "reasons": None,
            "threads": 1,
        }

    job = ("8x1024x32000", "bfloat16")
    summary = {
        ("ce", *job): bench.summarise([child(1.0, 4000.0, None)]),
        ("ours_maxsup", *job): bench.summarise([child(0.5, 4000.0, "triton")]),
    }
    args = bench.parse_args(["--device", "cuda"])
    bench.print_tables(args, [job[0]], [job[1]], ["ce", "ours_maxsup"], {}, summary)
    out = capsys.readouterr().out
    # floor: 2 x 524,288,000 bytes (bf16 logits read, gradient written) at 4000 GB/s = 0.262144 ms
    assert "(floor 0.262 ms at the median copy bandwidth, 4000 GB/s)" in out, out
    assert "| **ours MaxSup** | triton | 0.50 | 0.50 | 1.91 | 1.00 | 4000 |" in out, out


def test_linear_loss_benchmark_tiny(tmp_path):
    candidates = "torch_linear_ce_ls,ours_linear_maxsup,liger_flce_ls"
    out = _run("linear_loss.py", *_tiny(tmp_path, "64x16x200", candidates)).stdout
    assert "### N×H×V = 64×16×200 float32 (logits 64×200)" in out, out
    rows = _table_rows(out)
    # the baseline of the ratios runs even when not asked for
    baseline = rows["`F.linear` + `F.cross_entropy`"]
    assert baseline[1] == "—" and baseline[3] == "1.00", out
    assert rows["**ours fused linear MaxSup**"][1] in ("c", "triton", "torch"), out
    assert float(rows["**ours fused linear MaxSup**"][2]) > 0, out
    assert "skipped: GPU only" in rows["Liger `LigerFusedLinearCrossEntropyLoss(label_smoothing=0.1)`"][2], out
    # torch's chunked path declines label smoothing: the report shows the warning that says so
    assert "warning raised by torch_linear_ce_ls: UserWarning: linear_cross_entropy: ``options`` ignored" in out, out
    assert "ours at 64x16x200: 64 rows per chunk (`default_chunk_size`)" in out, out
    report = json.loads((tmp_path / "r.json").read_text())
    assert sorted(report["results"]) == [
        "linear_ce|64x16x200|float32",
        "ours_linear_maxsup|64x16x200|float32",
        "torch_linear_ce_ls|64x16x200|float32",
    ]
    assert all(run["times"][0] > 0 for runs in report["results"].values() for run in runs)
    assert report["summary"]["ours_linear_maxsup|64x16x200|float32"]["backend"] in ("c", "triton", "torch")
    assert report["skipped"] == {"liger_flce_ls": "GPU only (Liger's kernels are Triton)"}


def test_trainer_benchmark_tiny():
    out = _run(
        "trainer.py", "--vocab", "64", "--d_model", "16", "--layers", "1", "--steps", "1", "--shapes", "2x8"
    ).stdout
    tables = out.split("| trainer |")[1:]
    assert len(tables) == 2, out  # the Marian and the causal-LM tables
    for table, n_rows, stock_name in ((tables[0], 5, "stock Seq2SeqTrainer"), (tables[1], 4, "stock Trainer")):
        rows = [line for line in table.splitlines() if line.startswith("| ")]
        assert len(rows) == n_rows, out
        stock = rows[0].split("|")
        assert stock[1].strip().startswith(stock_name), out
        assert stock[3].strip() == "1.00" and stock[5].strip() == "1.00", out
        assert "fused_linear_loss=True" in rows[-1], out
        for row in rows:
            assert float(row.split("|")[2]) > 0, out
