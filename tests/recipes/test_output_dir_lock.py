"""The output-dir lock goes through `filelock`'s native lock, not `fcntl` (POSIX only): the runner's output-dir module
imports where `fcntl` does not exist, and the lock contends with `filelock.FileLock` on the same file."""

import subprocess
import sys
import textwrap

import pytest
from filelock import FileLock, Timeout

from hf_maxsup.runner.output_dir import LOCK_FILE, lock_output_dir, release_output_dir


def test_the_output_dir_module_needs_no_fcntl():
    """As on Windows, where there is no fcntl module."""
    code = textwrap.dedent("""
        import sys
        sys.modules["fcntl"] = None  # `import fcntl` raises ImportError, as on Windows
        import hf_maxsup.runner.output_dir
        print("imported")
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.stdout.strip() == "imported", result.stderr[-2000:]


def test_the_lock_is_filelocks(tmp_path):
    out = tmp_path / "run"
    lock_output_dir(str(out))
    try:
        with pytest.raises(Timeout):
            FileLock(str(out / LOCK_FILE), timeout=0).acquire()
        lock_output_dir(str(out))  # this process may take its own directory again (several recipes in turn)
    finally:
        release_output_dir(str(out))
    with FileLock(str(out / LOCK_FILE), timeout=0):
        pass  # released
