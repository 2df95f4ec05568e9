"""The benchmark scripts run end to end at tiny sizes and print their ratio tables (so they cannot rot unnoticed)."""

import importlib.util
import json
import os
import subprocess
import sys
import time
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


# ---------------------------------------------------------------------------------------------------
# benchmarks/gpu_day_one.py: the GPU command, run here on a CPU (--dry-run), and its report fed GPU records

# The tables of the command, their columns fixed whatever was measured (docs/gpu.md shows them).
DAY_ONE_HEADERS = {
    "## a. Correctness on the device": "| test file | passed | failed | skipped | errors | seconds |",
    "## b. Loss forward + backward": (
        "| implementation | backend | ms | × CE | × floor | × Liger | extra memory × logits |"
    ),
    "## c. Fused linear loss forward + backward": (
        "| implementation | backend | ms | × linear CE | × Liger | extra memory × logits |"
    ),
    "## d. Training step": "| trainer | steps/s | × stock LS | peak memory GiB | × stock LS | mean loss |",
    "## Targets (issue 25)": "| target | measured | met |",
}
# Absent on the GPU machine: hidden from every process of the dry run (import fails, find_spec says None).
HIDDEN = ("datasets", "evaluate", "trl")


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _without_hidden_packages(tmp_path) -> dict:
    """An environment whose Python processes see none of `HIDDEN`, through a sitecustomize on PYTHONPATH."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(f"import sys\n\nfor name in {HIDDEN!r}:\n    sys.modules[name] = None\n")
    root = str(BENCHMARKS.parent)
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), root, os.environ.get("PYTHONPATH", "")])}


def test_gpu_day_one_dry_run(tmp_path):
    env = _without_hidden_packages(tmp_path)
    for name in HIDDEN:
        hidden = subprocess.run([sys.executable, "-c", f"import {name}"], env=env, capture_output=True, check=False)
        assert hidden.returncode != 0, f"{name} is importable: the check below would prove nothing"
    out_dir = tmp_path / "out"
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / "gpu_day_one.py"), "--dry-run", "--output_dir", str(out_dir)],
        env=env, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    elapsed = time.perf_counter() - start
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert elapsed < 120, f"the dry run took {elapsed:.0f} s; CI gives it 2 minutes"
    markdown = (out_dir / "day_one.md").read_text()
    for title, header in DAY_ONE_HEADERS.items():
        for text in (result.stdout, markdown):
            assert title in text and header in text, (title, text)
    report = json.loads((out_dir / "day_one.json").read_text())
    steps = report["steps"]
    assert list(steps) == ["tests", "loss", "linear", "train"]
    assert {step["status"] for step in steps.values()} == {"done"}, steps
    for record in (r for r in steps["tests"]["records"] if "file" in r):
        assert record["passed"] > 0 and record["failed"] == record["errors"] == 0, record
    for name, candidates in (("loss", 7), ("linear", 4)):  # all but Liger's, skipped without liger-kernel
        measured = [r for r in steps[name]["records"] if "times" in r]
        plan = next(r["plan"] for r in steps[name]["records"] if "plan" in r)
        assert len(measured) == candidates * len(plan["shapes"]) * len(plan["dtypes"]), steps[name]["records"]
        assert {r["backend"] for r in measured if r["candidate"].startswith("ours")} == {"triton"}
        assert any("liger-kernel is not installed" in r.get("skipped", "") for r in steps[name]["records"])
    trained = {r["trainer"]: r for r in steps["train"]["records"] if "trainer" in r}
    assert len(trained) == 5 and all(r["steps_per_s"] > 0 for r in trained.values()), trained
    # the stock Trainer's label smoothing and MaxSupTrainer's are one loss: same data, same seed, same mean loss
    stock, ours = trained["stock Trainer, label_smoothing_factor=0.1"], trained["MaxSupTrainer, loss=ls"]
    assert abs(stock["train_loss"] - ours["train_loss"]) < 1e-4, trained
    assert "— (dry run)" in markdown


def _gpu_record(candidate, shape, ms, extra, nbytes):
    backend = "triton" if "ours" in candidate else None
    return {"candidate": candidate, "shape": shape, "dtype": "bfloat16", "round": 0, "times": [ms / 1e3],
            "extra_bytes": extra * nbytes, "logits_bytes": nbytes, "backend": backend}  # fmt: skip


def test_gpu_day_one_report_of_gpu_records():
    """The tables and targets rendered from what the GPU steps would emit: ratios to CE, to the floor and to Liger."""
    report = _load("_day_one_report", BENCHMARKS / "_day_one_report.py")
    nbytes = 8 * 1024 * 32000 * 2
    records = [{"plan": {"shapes": ["8x1024x32000"], "dtypes": ["bfloat16"]}}, {"bandwidth_gb_s": 4000.0}]
    for candidate, ms, extra in (("ce", 1.0, 3.0), ("liger_ls", 0.5, 0.0), ("ours_ls", 0.4, 1.0),
                                 ("ours_maxsup", 0.6, 1.0), ("ours_ls_inplace", 0.3, 0.0)):  # fmt: skip
        records.append(_gpu_record(candidate, "8x1024x32000", ms, extra, nbytes))
    step = {"status": "done", "seconds": 60.0, "records": records}
    out = report.render_step("loss", step)
    # floor: 2 x 524,288,000 bytes at 4000 GB/s = 0.262 ms; ours LS 0.4 ms: 0.40 x CE, 1.53 x floor, 0.80 x Liger
    assert "### 8×1024×32000 bfloat16 (floor 0.262 ms" in out, out
    assert "| **ours LS** | triton | 0.400 | 0.40 | 1.53 | 0.80 | 1.00 |" in out, out
    assert "| `F.cross_entropy(label_smoothing=0.1)` |  | not run |" in out, out
    targets = report.render_targets({"loss": step}, dry_run=False)
    assert "| loss ≤ 1.5× the bandwidth floor | worst 2.29× (ours_maxsup, 8x1024x32000 bfloat16) | **no** |" in targets
    assert "| loss no slower than Liger's CE with LS (× Liger) | worst 1.20× (ours_maxsup" in targets, targets
    assert "| extra memory ≤ 1.0× one logits tensor | worst 1.00× (ours_ls, 8x1024x32000 bfloat16) | yes |" in targets
    assert "| every Triton test passes on the device | not measured | — |" in targets


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message given when there is no GPU")
def test_gpu_day_one_without_gpu(tmp_path):
    result = _run("gpu_day_one.py", "--output_dir", str(tmp_path / "out"), ok=False)
    assert result.returncode != 0 and "torch sees no CUDA GPU" in result.stderr, result.stderr
    assert "--dry-run" in result.stderr and not (tmp_path / "out").exists()  # stopped before any step


def test_test_device_refuses_what_cannot_run():
    """HF_MAXSUP_TEST_DEVICE (tests/_device.py): the Triton tests' device, or an error naming the fix."""
    from _device import resolve_device

    assert resolve_device(None, interpret=True, cuda_available=False).type == "cpu"
    assert resolve_device(None, interpret=False, cuda_available=True).type == "cuda"
    assert resolve_device("cuda", interpret=False, cuda_available=True).type == "cuda"
    assert resolve_device("cpu", interpret=True, cuda_available=True).type == "cpu"
    for asked, interpret, cuda, fix in (("cuda", True, False, "torch sees no CUDA GPU"),
                                         ("cuda", True, True, "unset TRITON_INTERPRET"),
                                         ("cpu", False, True, "set TRITON_INTERPRET=1"),
                                         ("mps", True, False, "use cuda")):  # fmt: skip
        with pytest.raises(ValueError, match=fix):
            resolve_device(asked, interpret, cuda)


def test_floors_admit_the_gpu_machines_stack():
    """pyproject's lower bounds (what make test-floors installs) admit the GPU machine's torch 2.11, triton 3.6,
    huggingface_hub 1.33 and accelerate 1.15; torch itself is not pinned there (the local CPU wheel stays)."""
    floors = dict(pin.split("==") for pin in _load("floors", BENCHMARKS.parent / ".ci" / "floors.py").floors(["gpu"]))
    assert "torch" not in floors
    stack = {"triton": "3.6.0", "huggingface_hub": "1.33.0", "accelerate": "1.15.0"}
    for name, version in stack.items():
        assert tuple(map(int, floors[name].split("."))) <= tuple(map(int, version.split("."))), (name, floors[name])
    pyproject = (BENCHMARKS.parent / "pyproject.toml").read_text()
    assert '"torch>=2.11.0"' in pyproject
