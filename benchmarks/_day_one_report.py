"""The Markdown of `gpu_day_one.py`: one section per step, rendered from the records the step emitted
(`_day_one_steps.py`), and the issue's targets checked against them. Every table keeps its columns (`COLUMNS`) whatever
was measured: a step that timed out or was skipped shows its rows with a note instead of numbers.
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import linear_loss as linear_bench  # noqa: E402
import loss as loss_bench  # noqa: E402
from _day_one_steps import LINEAR_CANDIDATES, LOSS_CANDIDATES, TEST_FILES, TRAIN_CANDIDATES  # noqa: E402

__all__ = ["COLUMNS", "TITLES", "render_step", "render_targets", "summaries"]

TITLES = {
    "tests": "a. Correctness on the device: the Triton tests against the float64 reference",
    "loss": "b. Loss forward + backward",
    "linear": "c. Fused linear loss forward + backward",
    "train": "d. Training step: Llama-body causal LM",
    "targets": "Targets (issue 25)",
}
COLUMNS = {
    "tests": ["test file", "passed", "failed", "skipped", "errors", "seconds"],
    "loss": ["implementation", "backend", "ms", "× CE", "× floor", "× Liger", "extra memory × logits"],
    "linear": ["implementation", "backend", "ms", "× linear CE", "× Liger", "extra memory × logits"],
    "train": ["trainer", "steps/s", "× stock LS", "peak memory GiB", "× stock LS", "mean loss"],
    "targets": ["target", "measured", "met"],
}


def _table(name: str, rows: list[list[str]]) -> str:
    columns = COLUMNS[name]
    lines = ["| " + " | ".join(columns) + " |", "|---|" + "---:|" * (len(columns) - 1)]
    lines += ["| " + " | ".join(row + [""] * (len(columns) - len(row))) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}" if a is not None and b else "—"


def _status(step: dict) -> str:
    seconds = f", {step['seconds']:.0f} s" if "seconds" in step else ""
    return f"*{step['status']}{seconds}*\n\n"


def render_tests(step: dict) -> str:
    """One row per test file: the counts of its pytest run, or why there are none; then the failures."""
    by_file = {r["file"]: r for r in step["records"] if "file" in r}
    rows, failures = [], []
    for path in TEST_FILES:
        r = by_file.get(path, {"status": step["status"]})
        if "passed" in r:
            rows.append(
                [path] + [str(r[k]) for k in ("passed", "failed", "skipped", "errors")] + [f"{r['seconds']:.0f}"]
            )
            failures += r["failures"]
        else:
            rows.append([path, r.get("status", "no result")])
    out = _table("tests", rows)
    if failures:
        out += "\nFailures (first 20 per file):\n\n" + "".join(f"- `{f['test']}`: {f['message']}\n" for f in failures)
    return out


def summaries(records: list[dict]) -> dict[tuple, dict]:
    """Per (candidate, shape, dtype): median time (ms) over the rounds of each round's median, median extra memory
    (× logits), the backend, and any error."""
    runs: dict[tuple, list[dict]] = {}
    for r in records:
        if "shape" in r:
            runs.setdefault((r["candidate"], r["shape"], r["dtype"]), []).append(r)
    out = {}
    for job, rs in runs.items():
        ok = [r for r in rs if "times" in r]
        if not ok:
            out[job] = {"error": rs[0].get("error", "failed")}
            continue
        out[job] = {
            "ms": statistics.median(statistics.median(r["times"]) for r in ok) * 1e3,
            "mem": statistics.median(r["extra_bytes"] / r["logits_bytes"] for r in ok),
            "logits_bytes": ok[0]["logits_bytes"],
            "backend": ok[0].get("backend") or "—",
            "rounds": len(ok),
        }
    return out


def _bench_tables(name: str, step: dict, candidates: list[str], baseline: str, labels: dict, liger: str) -> str:
    """The loss or linear tables: one per planned (shape, dtype), a row per candidate."""
    records = step["records"]
    summary = summaries(records)
    skipped = {r["candidate"]: r["skipped"] for r in records if "skipped" in r}
    bandwidth = next((r["bandwidth_gb_s"] for r in records if "bandwidth_gb_s" in r and "shape" not in r), None)
    plan = next((r["plan"] for r in records if "plan" in r), {"shapes": [], "dtypes": []})
    out = f"Copy bandwidth measured at the step's start: {bandwidth:.0f} GB/s.\n\n" if bandwidth else ""
    for shape in plan["shapes"]:
        for dtype in plan["dtypes"]:
            measured = {c: summary.get((c, shape, dtype), {}) for c in candidates}
            nbytes = next((m["logits_bytes"] for m in measured.values() if "logits_bytes" in m), None)
            floor = loss_bench.floor_ms(nbytes, nbytes, bandwidth) if name == "loss" and nbytes and bandwidth else None
            rows = [_bench_row(name, labels[c], measured[c], skipped.get(c), measured[baseline], measured[liger], floor)
                    for c in candidates]  # fmt: skip
            note = f" (floor {floor:.3f} ms: logits read once, gradient written once)" if floor else ""
            out += f"### {shape.replace('x', '×')} {dtype}{note}\n\n" + _table(name, rows) + "\n"
    return out + "".join(f"{r['note']}\n" for r in records if "note" in r)


def _bench_row(name, label, m, skipped, base, liger, floor) -> list[str]:
    """The cells of one candidate: its measurements, or why there are none."""
    if skipped or "ms" not in m:
        return [label, "", f"skipped: {skipped}" if skipped else m.get("error", "not run")]
    cells = [label, m["backend"], f"{m['ms']:.3f}", _ratio(m["ms"], base.get("ms"))]
    cells += [_ratio(m["ms"], floor)] if name == "loss" else []
    return cells + [_ratio(m["ms"], liger.get("ms")), f"{m['mem']:.2f}"]


def render_train(step: dict) -> str:
    """One row per trainer, ratios to the stock Trainer with label smoothing."""
    records = {r["trainer"]: r for r in step["records"] if "trainer" in r}
    sizes = next((r["sizes"] for r in step["records"] if "sizes" in r), None)
    out = ""
    if sizes:
        shape = sizes["shape"].replace("x", " × ")
        out = (
            f"V = {sizes['vocab']}, hidden {sizes['d_model']}, layers: {sizes['layers']}, batch × tokens {shape}, "
            f"{sizes['steps']} timed steps after {sizes['warmup']}.\n\n"
        )
    stock = records.get(next(iter(TRAIN_CANDIDATES)), {})
    rows = []
    for label in TRAIN_CANDIDATES:
        r = records.get(label, {"skipped": step["status"]})
        if "steps_per_s" not in r:
            rows.append([label, r.get("skipped") or r.get("error", "not run")])
            continue
        gib = r["peak_bytes"] / 2**30 if r["peak_bytes"] is not None else None
        stock_gib = stock["peak_bytes"] / 2**30 if stock.get("peak_bytes") is not None else None
        memory = [f"{gib:.2f}", _ratio(gib, stock_gib)] if gib is not None else ["— (CPU)", "—"]
        speed = [f"{r['steps_per_s']:.2f}", _ratio(r["steps_per_s"], stock.get("steps_per_s"))]
        rows.append([label, *speed, *memory, f"{r['train_loss']:.4f}"])
    return out + _table("train", rows)


def render_step(name: str, step: dict) -> str:
    """The Markdown section of one step: its title, its status and its tables."""
    body = {
        "tests": lambda: render_tests(step),
        "loss": lambda: _bench_tables("loss", step, LOSS_CANDIDATES, "ce", loss_bench.CANDIDATES, "liger_ls"),
        "linear": lambda: _bench_tables(
            "linear", step, LINEAR_CANDIDATES, "linear_ce", linear_bench.CANDIDATES, "liger_flce_ls"
        ),
        "train": lambda: render_train(step),
    }[name]()
    return f"## {TITLES[name]}\n\n" + _status(step) + body + "\n"


def _worst(summary: dict, candidates: list[str], value, reference: str | None = None):
    """The largest `value(m)` (or `value(m) / value(reference's m)`) over the (shape, dtype) jobs of `candidates`, with
    its job; None where nothing was measured."""
    worst = None
    for (c, shape, dtype), m in summary.items():
        ref = summary.get((reference, shape, dtype), {}) if reference else None
        if c not in candidates or "ms" not in m or (reference and "ms" not in ref):
            continue
        v = value(m) / value(ref) if reference else value(m)
        if worst is None or v > worst[0]:
            worst = (v, f"{c}, {shape} {dtype}")
    return worst


def _target_row(target: str, worst, limit: float) -> list[str]:
    if worst is None:
        return [target, "not measured", "—"]
    return [target, f"worst {worst[0]:.2f}× ({worst[1]})", "yes" if worst[0] <= limit else "**no**"]


def render_targets(steps: dict, dry_run: bool) -> str:
    """The issue's targets for a GPU run, each against the worst case measured (a dry run's CPU numbers are no test of
    them: its verdicts say so)."""
    rows = []
    tests = [r for r in steps.get("tests", {}).get("records", []) if "passed" in r]
    if len(tests) == len(TEST_FILES):
        passed, bad = sum(r["passed"] for r in tests), sum(r["failed"] + r["errors"] for r in tests)
        rows.append(
            ["every Triton test passes on the device", f"{passed} passed, {bad} failed", "yes" if not bad else "**no**"]
        )
    else:
        rows.append(["every Triton test passes on the device", "not measured", "—"])
    loss = summaries(steps.get("loss", {}).get("records", []))
    bandwidth = next(
        (r["bandwidth_gb_s"] for r in steps.get("loss", {}).get("records", []) if "bandwidth_gb_s" in r), None
    )
    ours, in_place = ["ours_ls", "ours_maxsup"], ["ours_ls_inplace", "ours_maxsup_inplace"]
    floor = (
        (lambda m: m["ms"] / loss_bench.floor_ms(m["logits_bytes"], m["logits_bytes"], bandwidth))
        if bandwidth
        else None
    )
    rows.append(
        _target_row("loss ≤ 1.5× the bandwidth floor", _worst(loss, ours + in_place, floor) if floor else None, 1.5)
    )
    rows.append(
        _target_row(
            "loss no slower than Liger's CE with LS (× Liger)", _worst(loss, ours, lambda m: m["ms"], "liger_ls"), 1.0
        )
    )
    rows.append(_target_row("extra memory ≤ 1.0× one logits tensor", _worst(loss, ours, lambda m: m["mem"]), 1.0))
    rows.append(_target_row("extra memory 0 in place (≤ 0.01×)", _worst(loss, in_place, lambda m: m["mem"]), 0.01))
    linear = summaries(steps.get("linear", {}).get("records", []))
    fused = ["ours_linear_ls", "ours_linear_maxsup"]
    rows.append(
        _target_row(
            "fused linear memory ≤ Liger's (× Liger)", _worst(linear, fused, lambda m: m["mem"], "liger_flce_ls"), 1.0
        )
    )
    rows.append(
        _target_row("fused linear time ≤ 1.1× Liger's", _worst(linear, fused, lambda m: m["ms"], "liger_flce_ls"), 1.1)
    )
    if dry_run:
        rows = [row[:2] + ["— (dry run)"] for row in rows]
    return f"## {TITLES['targets']}\n\n" + _table("targets", rows) + "\n"
