"""Prints the floors of pyproject.toml as a pip constraints file: `name==lower bound` for every requirement of
[project] dependencies and of the extras named on the command line, one a line.

    python .ci/floors.py test gpu > floors.txt    # what `make test-floors` installs with `pip install -c floors.txt`

torch is left out: `make test-floors` keeps the local CPU wheel (see the Makefile). A requirement without a `>=` lower
bound stops it: every dependency has a tested floor.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import tomllib

__all__ = ["floors"]

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"
# torch: the local CPU wheel, not its floor (PyPI's torch for Linux pulls several GB of CUDA packages)
KEPT = {"torch"}


def floors(extras: list[str], pyproject: Path = PYPROJECT) -> list[str]:
    """`name==version` for each requirement of the project and of `extras`, at its `>=` lower bound.

    Raises:
        `SystemExit`: for an unknown extra, or a requirement without a `>=` lower bound.
    """
    project = tomllib.loads(pyproject.read_text())["project"]
    optional = project.get("optional-dependencies", {})
    unknown = [extra for extra in extras if extra not in optional]
    if unknown:
        raise SystemExit(f"unknown extra {', '.join(unknown)}; pyproject.toml has {', '.join(optional)}")
    pins = {}
    for requirement in project["dependencies"] + [r for extra in extras for r in optional[extra]]:
        match = re.fullmatch(r"([A-Za-z0-9_.\-]+)\s*>=\s*([0-9][0-9A-Za-z.]*)", requirement.strip())
        if match is None:
            raise SystemExit(f"{requirement!r} in pyproject.toml: give it a lower bound (name>=version) to test")
        name, version = match.groups()
        if name.lower() not in KEPT:
            pins[name.lower()] = f"{name}=={version}"
    return list(pins.values())


if __name__ == "__main__":
    print("\n".join(floors(sys.argv[1:])))
