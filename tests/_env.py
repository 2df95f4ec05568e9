"""The environment of the tests' subprocesses: this checkout's package and test helpers first on the path, so that a
launched process tests the code beside these tests, not whatever hf_maxsup is installed."""

import os
from pathlib import Path

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent


def subprocess_env(**extra: str) -> dict[str, str]:
    """`os.environ` with `PYTHONPATH` = tests, repository root, then the inherited path; plus `extra`."""
    path = [str(TESTS), str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(path), **extra}
