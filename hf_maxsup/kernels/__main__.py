"""Ahead-of-time check of the Triton kernels: `python -m hf_maxsup.kernels --aot sm_80,sm_90`.

Compiles every variant that `hf_maxsup.kernels._triton.specialisations()` lists (each loss x class indices or
soft targets x value or value-and-gradient x logits dtype x block size, and the scale kernel) with its `compile`
(`triton.compile(ASTSource(...), target=GPUTarget("cuda", cap, 32))`, which needs no GPU), then runs the
`ptxas-blackwell` shipped in Triton's wheel on the PTX (the wheel's plain `ptxas` is too old for the PTX version
Triton 3.9 emits) and prints one line per variant and target: name, target, registers, spill stores, spill loads.

`--match REGEX` restricts the check to the variants whose name matches (a full run takes one to two minutes on a
cold Triton cache, ~20 s on a warm one). Exits 1 if any variant fails to compile or spills, 0 otherwise. Do not set
`TRITON_INTERPRET` for it: the interpreter's kernels cannot be compiled.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time

from . import _triton  # imports without triton too: `aot` then says why it cannot run

__all__ = ["aot", "main"]


def _ptxas() -> str:
    """Path of the wheel's `ptxas-blackwell` (CUDA 13), which accepts the PTX that Triton 3.9 writes."""
    path = os.path.join(os.path.dirname(_triton.triton.__file__), "backends", "nvidia", "bin", "ptxas-blackwell")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found: this check needs the triton wheel's ptxas-blackwell")
    return path


def _resource_usage(ptx: str, arch: str, ptxas: str) -> tuple[int, int, int]:
    """`(registers, spill store bytes, spill load bytes)` that ptxas reports for `ptx` (compiled for `arch`)."""
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "kernel.ptx")
        with open(src, "w") as f:
            f.write(ptx)
        # the target the PTX was written for: sm_90a (arch-specific features) for sm_90, plain sm_80 for sm_80
        target = re.search(r"^\.target\s+(sm_\w+)", ptx, re.MULTILINE)
        gpu_name = target.group(1) if target else arch
        cmd = [ptxas, "--gpu-name", gpu_name, "-v", src, "-o", os.path.join(tmp, "kernel.cubin")]
        out = subprocess.run(cmd, capture_output=True, text=True)
    log = out.stdout + out.stderr
    if out.returncode != 0:
        raise RuntimeError(f"ptxas failed ({' '.join(cmd[1:4])}): {log.strip()}")
    regs = re.search(r"Used (\d+) registers", log)
    spills = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log)
    if regs is None or spills is None:
        raise RuntimeError(f"could not read ptxas's report:\n{log}")
    return int(regs.group(1)), int(spills.group(1)), int(spills.group(2))


def _first_line(exc: Exception) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else ""


def aot(archs: list[str], match: str | None = None) -> int:
    """Compiles every variant (those whose name matches the regex `match`, if given) for every arch in `archs`, prints
    its resource usage and returns the exit status."""
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # Triton's default, set to silence its warning
    if os.environ.get("TRITON_INTERPRET") == "1":
        print("unset TRITON_INTERPRET: the interpreter's kernels cannot be compiled", file=sys.stderr)
        return 1
    if _triton.triton is None:
        print(f"triton is not importable: {_triton.IMPORT_ERROR}", file=sys.stderr)
        return 1
    ptxas = _ptxas()
    specs = [spec for spec in _triton.specialisations() if match is None or re.search(match, spec.name)]
    if not specs:
        print(f"no variant matches {match!r}", file=sys.stderr)
        return 1
    failures = spilled = 0
    start = time.perf_counter()
    for arch in archs:
        capability = int(arch.removeprefix("sm_"))
        for spec in specs:
            try:
                compiled = spec.compile(capability)
                regs, stores, loads = _resource_usage(compiled.asm["ptx"], arch, ptxas)
            except Exception as exc:  # report every failing variant, not just the first
                failures += 1
                print(f"{spec.name:<60} {arch}  FAILED: {type(exc).__name__}: {_first_line(exc)}")
                continue
            spilled += bool(stores or loads)
            print(f"{spec.name:<60} {arch}  regs {regs:3d}  spill stores {stores:4d}  spill loads {loads:4d}")
    n = len(specs) * len(archs)
    print(f"{n} variants, {failures} failed, {spilled} spilled, {time.perf_counter() - start:.0f} s")
    return 1 if failures or spilled else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hf_maxsup.kernels", description=__doc__.splitlines()[0])
    parser.add_argument("--aot", metavar="ARCHS", required=True,
                        help="comma-separated GPU targets to compile for, e.g. sm_80,sm_90")  # fmt: skip
    parser.add_argument("--match", metavar="REGEX", default=None,
                        help="only the variants whose name matches this regular expression, "
                        "e.g. 'maxsup.*grad'")  # fmt: skip
    args = parser.parse_args(argv)
    archs = [a.strip() for a in args.aot.split(",") if a.strip()]
    bad = [a for a in archs if not re.fullmatch(r"sm_\d+", a)]
    if bad or not archs:
        parser.error(f"targets look like sm_80,sm_90; got {args.aot!r}")
    return aot(archs, args.match)


if __name__ == "__main__":
    sys.exit(main())
