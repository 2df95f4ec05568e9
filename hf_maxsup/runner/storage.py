"""The folders a run writes to, checked before any work, and what a failed write means.

`--output_dir` must be a folder (or a path one can be made at) with names the file system takes, and this process
must be able to create and write files in it; so must it in the `datasets` cache (under `HOME` unless
`HF_DATASETS_CACHE`, `HF_HOME` or `--cache_dir` say otherwise). A disk that fills up during the run is found only
when a write fails, and torch's zip writer says so as `[enforce fail at inline_container.cc:...] unexpected pos`:
[`full_disk_error`] turns that into a message with the folder, the space left and how to go on.

Without torch or transformers, as `output_dir`.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile

__all__ = ["check_output_dir", "check_writable_folder", "full_disk_error"]

# The longest name a run writes below its output_dir, with room to spare (checkpoint-<step>/<file>).
_LONGEST_INSIDE = len("damaged-checkpoint-10000000-10/model.safetensors.index.json") + 16
# How torch's zip writer (torch.save) reports a write the disk did not take: no errno, only these words.
_TORCH_WRITE_FAILED = ("unexpected pos", "file write failed")
# Below this much free space a failed write is put down to a full disk.
_NEARLY_FULL = 64 << 20


def check_output_dir(output_dir: str) -> None:
    """`--output_dir` before any work: not a file, names the file system takes, and a folder this process can write
    in (created when missing).

    Raises:
        `ValueError`: the message names the path, what is wrong and the fix.
    """
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise ValueError(
            f"--output_dir {output_dir} is a file: give a folder (it is created when missing), or move the file away."
        )
    path = os.path.abspath(output_dir)
    existing = next(parent for parent in _parents(path) if os.path.isdir(parent))
    name_max, path_max = _limit(existing, "PC_NAME_MAX", 255), _limit(existing, "PC_PATH_MAX", 4096)
    long_names = [name for name in path.split(os.sep) if len(name.encode()) > name_max]
    if long_names:
        raise ValueError(
            f"--output_dir {output_dir}: the name {long_names[0][:40]}... has {len(long_names[0].encode())} bytes, "
            f"more than the {name_max} this file system takes. Give a shorter --output_dir."
        )
    if len(path.encode()) + _LONGEST_INSIDE > path_max:
        raise ValueError(
            f"--output_dir {output_dir}: the path has {len(path.encode())} bytes, too long for the checkpoint files "
            f"inside it (this file system takes paths of up to {path_max} bytes). Give a shorter --output_dir."
        )
    check_writable_folder(output_dir, "--output_dir", "give another --output_dir, or make that folder writable")


def check_writable_folder(folder: str, what: str, fix: str) -> None:
    """Create `folder` if it is missing and write (then remove) a file in it.

    Args:
        folder (`str`): the folder.
        what (`str`): what it is, for the message (`"--output_dir"`, `"the datasets cache"`).
        fix (`str`): what the user can do, for the message.

    Raises:
        `ValueError`: it cannot be created or written in (read-only file system, permissions, a file in the way);
        the message names the folder, the reason and `fix`.
    """
    try:
        os.makedirs(folder, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        reason = err.strerror or str(err)
        # Name the folder above it where creating failed, e.g. a read-only HOME under which the cache would be made.
        above = err.filename and os.path.abspath(folder).startswith(os.path.abspath(err.filename) + os.sep)
        where = f" ({err.filename})" if above else ""
        raise ValueError(f"{what} {folder} cannot be written to: {reason}{where}. Fix: {fix}.") from err


def full_disk_error(err: BaseException, output_dir: str, then: str) -> OSError | None:
    """The error to raise instead of `err`, a failed write, when the disk of `output_dir` is full: an `OSError`
    (`ENOSPC`) naming the folder, the space left and how to go on; `None` when `err` is something else.

    Args:
        err (`BaseException`): what the write raised: an `OSError` with `ENOSPC` or `EDQUOT`, or the `RuntimeError`
            of torch's zip writer, put down to a full disk when under 64 MiB are left.
        output_dir (`str`): the run's folder.
        then (`str`): how to go on once there is room, e.g. `"run again with --resume_from_checkpoint last"`.
    """
    try:
        free = shutil.disk_usage(output_dir).free
    except OSError:
        free = None
    no_space = isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT)
    torch_failed = isinstance(err, RuntimeError) and any(words in str(err) for words in _TORCH_WRITE_FAILED)
    if not (no_space or (torch_failed and free is not None and free < _NEARLY_FULL)):
        return None
    left = f"{free / 2**20:.1f} MiB left" if free is not None else "space left unknown"
    return OSError(
        errno.ENOSPC,
        f"the disk of --output_dir {output_dir} is full ({left}); a write failed: {err}. Free space there (or give "
        f"an --output_dir on a disk with room, or keep fewer checkpoints with --save_total_limit), then {then}.",
    )


def _parents(path: str):
    """`path` and the folders above it, nearest first."""
    while True:
        yield path
        parent = os.path.dirname(path)
        if parent == path:
            return
        path = parent


def _limit(folder: str, name: str, default: int) -> int:
    try:
        return os.pathconf(folder, name)
    except (OSError, ValueError):
        return default
