"""MaxSup against LS at equal alpha, tested on the committed comparisons' `results.json` (no training, no model).

    python docs/compare_fmnist/equal_alpha.py > docs/compare_fmnist/equal_alpha.md

The showcase (`report.md`) sets MaxSup's 0.1 -> 0.2 against LS's constant 0.1; `ls_linear_alpha/` trained LS on
MaxSup's schedule (5 seeds) and `maxsup_constant_alpha/` MaxSup at LS's constant 0.1 (3 seeds). The MaxSup paper's
claims on MaxSup against LS are tested here at both equal alphas with the reports' own test (paired by seed when both
sides hold the same seeds, Welch's otherwise; Holm's correction across all the claims below).
"""

from __future__ import annotations

import json
from pathlib import Path

from hf_maxsup.report.classification import TABLE_METRICS
from hf_maxsup.report.markdown import claims_lines
from hf_maxsup.report.runs import RunResult
from hf_maxsup.report.stats import Claim, paper_checks

HERE = Path(__file__).resolve().parent
# (folder, label in that report, label here)
GROUPS = (
    (HERE, "maxsup", "maxsup 0.1→0.2"),
    (HERE / "ls_linear_alpha", "ls", "ls 0.1→0.2"),
    (HERE / "maxsup_constant_alpha", "maxsup", "maxsup 0.1"),
    (HERE, "ls", "ls 0.1"),
)


def claims(maxsup: str, ls: str) -> list[Claim]:
    """The MaxSup paper's claims on MaxSup against LS, for the groups `maxsup` and `ls`."""
    source = "MaxSup paper"
    return [
        Claim(f"MaxSup keeps d_within above LS ({source}), {maxsup} vs {ls}", "d_within", maxsup, ">", ls),
        Claim(f"MaxSup's R² is above LS's ({source}), {maxsup} vs {ls}", "r2", maxsup, ">", ls),
        Claim(f"MaxSup accuracy is at least LS's ({source}), {maxsup} vs {ls}", "accuracy", maxsup, ">=", ls),
        Claim(
            f"MaxSup is less confident than LS on misclassified examples ({source}), {maxsup} vs {ls}",
            "mean_confidence_wrong",
            maxsup,
            "<",
            ls,
        ),
    ]


def runs() -> list[RunResult]:
    """The runs of the four groups, relabelled."""
    found = []
    for folder, label, name in GROUPS:
        for run in json.loads((folder / "results.json").read_text())["runs"]:
            if run["label"] == label:
                found.append(RunResult(**{**run, "label": name}))  # as reanalysis reads them
    return found


def main() -> None:
    checks = paper_checks(runs(), claims("maxsup 0.1→0.2", "ls 0.1→0.2") + claims("maxsup 0.1", "ls 0.1"))
    print("# MaxSup against LS at equal alpha\n")
    print("`python docs/compare_fmnist/equal_alpha.py > docs/compare_fmnist/equal_alpha.md`, from the runs of")
    print("`report.md` (both losses), `ls_linear_alpha/` and `maxsup_constant_alpha/` (their `results.json`).\n")
    print("\n".join(claims_lines("the papers", checks, TABLE_METRICS)))


if __name__ == "__main__":
    main()
