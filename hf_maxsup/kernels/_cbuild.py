"""The C kernel's build: the system compiler, the private, hash-verified cache it builds into, and the loading.

The kernel is compiled with the system C compiler (`CC` when set, honoured as given; else gcc, cc or clang) into a
cache directory (`$HF_MAXSUP_CACHE`, else `$XDG_CACHE_HOME/hf_maxsup`, else `~/.cache/hf_maxsup`) under a key that
hashes the source, the flags, the compiler and the CPU; concurrent builders (DDP ranks) publish with an atomic
rename. `HF_MAXSUP_CFLAGS` replaces the flag sets tried (`-march=native` first), e.g. `-march=x86-64-v3` for a cache
shared by different CPUs.

Safety of the cache: the directory must be owned by the user and writable by nobody else (it is created with mode
0700); a library is loaded only when it is owned by the user, not writable by others, and its SHA-256 matches the
one recorded beside it when it was built (a truncated or foreign file is rebuilt, never loaded). When the cache
cannot be used, the kernel is built, with a note, into this user's private folder in the temporary directory
(`hf_maxsup-<uid>`, reused by later processes), or into a fresh one removed at exit when that folder is not private.
"""

from __future__ import annotations

import atexit
import ctypes
import getpass
import hashlib
import os
import platform
import shlex
import shutil
import stat
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ABI_VERSION", "Build", "build_and_load"]

# The version of the argument block `hfm_args` (HFM_ABI_VERSION in csrc/fused_loss.c).
ABI_VERSION = 5
_SRC = Path(__file__).resolve().parent / "csrc" / "fused_loss.c"
_BASE_FLAGS = [
    "-O3",
    "-std=gnu11",
    "-fPIC",
    "-shared",
    "-pthread",
    "-fno-math-errno",
    "-fno-trapping-math",
    "-Wno-psabi",
]
# Tried in order; the first that compiles is used. No -ffast-math: NaN/inf and the max tie rule must hold.
_FLAG_SETS = [["-march=native"], [], ["-march=native", "-DHFM_NO_F16"], ["-DHFM_NO_F16"]]


@dataclass
class Build:
    """What one build attempt found: the loaded library and its path, or why there is none; a note on the way (a
    fallback flag set, the fallback folder) when there is one."""

    lib: ctypes.CDLL | None = None
    path: str | None = None
    error: str | None = None


def _cache_dir() -> Path:
    if os.environ.get("HF_MAXSUP_CACHE"):
        return Path(os.environ["HF_MAXSUP_CACHE"])
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "hf_maxsup"


def _private_problem(path: Path) -> str | None:
    """Why `path` may not hold code this process loads (None when it is ours and writable by us alone)."""
    st = path.lstat()
    if stat.S_ISLNK(st.st_mode):
        return f"{path} is a symbolic link"
    if hasattr(os, "getuid") and st.st_uid != os.getuid():
        return f"{path} is owned by uid {st.st_uid}, not by this user"
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return f"{path} is writable by other users (mode {stat.S_IMODE(st.st_mode):o})"
    return None


def _fallback_dir() -> tuple[Path, str]:
    """Where to build when the cache is not usable: this user's private folder in the temporary directory, created
    once and reused by later processes (`hf_maxsup-<uid>`: a build found there is verified like any other), or, when
    that folder is not private (another user made it first), a fresh one removed when the process exits."""
    owner = os.getuid() if hasattr(os, "getuid") else getpass.getuser()
    shared = Path(tempfile.gettempdir()) / f"hf_maxsup-{owner}"
    try:
        shared.mkdir(mode=0o700, exist_ok=True)
        problem = _private_problem(shared)
    except OSError as err:
        problem = f"cannot create {shared}: {err.strerror or err}"
    if problem is None:
        return shared, f"built into {shared}, this user's fallback folder (reused by later processes)"
    # mkdtemp makes a new directory with mode 0700 and an unpredictable name: nobody can have planted a file in it.
    fresh = Path(tempfile.mkdtemp(prefix="hf_maxsup-"))
    atexit.register(shutil.rmtree, fresh, ignore_errors=True)
    return fresh, f"{problem}, so built into {fresh} for this process only (removed when it exits)"


def _usable_cache_dir() -> tuple[Path, str | None]:
    """The cache directory, or the fallback folder and the reason the cache could not be used."""
    cache = _cache_dir()
    try:
        cache.mkdir(mode=0o700, parents=True, exist_ok=True)
        problem = _private_problem(cache)
        if problem is None and not os.access(cache, os.W_OK | os.X_OK):
            problem = f"{cache} is not writable"
    except OSError as err:
        problem = f"cannot create {cache}: {err.strerror or err}"
    if problem is None:
        return cache, None
    fallback, where = _fallback_dir()
    return fallback, (
        f"the kernel cache is not usable ({problem}); {where}. "
        "Set HF_MAXSUP_CACHE to a directory of your own (mode 0700) to build once and reuse the build."
    )


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _verified(lib_path: Path) -> bool:
    """Whether `lib_path` is a complete build of ours: our file, written by us alone, with the recorded hash."""
    digest_path = lib_path.with_suffix(".sha256")
    try:
        if _private_problem(lib_path) or _private_problem(digest_path):
            return False
        return digest_path.read_text().strip() == _sha256(lib_path)
    except OSError:
        return False


def _compiler() -> tuple[list[str] | None, str | None]:
    """The compiler command and `None`, or `None` and why there is none: `CC` as given when it is set (a program on
    PATH or a path, possibly with arguments, e.g. `ccache gcc`), else the first of gcc, cc and clang found."""
    cc = os.environ.get("CC", "").strip()
    if not cc:
        found = next((shutil.which(name) for name in ("gcc", "cc", "clang") if shutil.which(name)), None)
        return ([found], None) if found else (None, "no C compiler found: install gcc (or set CC)")
    try:
        command = shlex.split(cc)
    except ValueError as err:
        return None, f"CC={cc!r} cannot be parsed ({err})"
    program = shutil.which(command[0]) if command else None
    if program is None:
        return None, (
            f"CC={cc!r} names no compiler on this machine: point CC at one, or unset it to let hf_maxsup find gcc, "
            "cc or clang"
        )
    return [program, *command[1:]], None


def _cpu_signature() -> str:
    """What `-march=native` depends on: the machine and, on Linux, the CPU flags."""
    parts = [platform.machine(), platform.system()]
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features", "model name")):
                    parts.append(line.strip())
                    if line.startswith(("flags", "Features")):
                        break
    except OSError:
        pass
    return "\n".join(parts)


def _build_key(cc: list[str], flags: list[str]) -> str:
    try:
        st = os.stat(cc[0])
        cc_id = f"{os.path.realpath(cc[0])}:{st.st_size}:{int(st.st_mtime)}:{' '.join(cc[1:])}"
    except OSError:
        cc_id = " ".join(cc)
    parts = [
        _SRC.read_bytes(),
        " ".join(flags).encode(),
        cc_id.encode(),
        _cpu_signature().encode(),
        str(ABI_VERSION).encode(),
    ]
    return hashlib.sha256(b"\0".join(parts)).hexdigest()[:20]


def _publish(tmp: str, out: Path) -> None:
    """Records the hash, then renames the library into place: a reader sees a complete, verifiable pair or none."""
    digest_tmp = f"{tmp}.sha256"
    Path(digest_tmp).write_text(_sha256(Path(tmp)))
    os.replace(digest_tmp, out.with_suffix(".sha256"))
    os.replace(tmp, out)


def _build(cache: Path, cc: list[str], extra_flags) -> Path:
    """Compiles the kernel with the command `cc` into `cache` unless a verified build with the same key is there;
    returns its path.

    Raises `RuntimeError` naming the compiler (`CC=...` when it came from there) with its output when it fails.
    """
    flags = _BASE_FLAGS + list(extra_flags)
    out = cache / f"fused_loss-{_build_key(cc, flags)}.so"
    if out.exists() and _verified(out):
        return out
    fd, tmp = tempfile.mkstemp(prefix=".fused_loss-", suffix=".so", dir=cache)
    os.close(fd)
    compiler = f"CC={os.environ['CC'].strip()!r}" if os.environ.get("CC", "").strip() else cc[0]
    try:
        try:
            proc = subprocess.run(
                [*cc, *flags, str(_SRC), "-o", tmp, "-lm"], capture_output=True, text=True, timeout=300, check=False
            )
        except (OSError, subprocess.SubprocessError) as err:
            raise RuntimeError(f"{compiler} {' '.join(flags)}: {err}") from err
        if proc.returncode != 0:
            output = (proc.stderr.strip() + "\n" + proc.stdout.strip()).strip()[-2000:] or "no output"
            raise RuntimeError(f"{compiler} {' '.join(flags)} failed (exit status {proc.returncode}): {output}")
        _publish(tmp, out)
    finally:
        for leftover in (tmp, f"{tmp}.sha256"):
            if os.path.exists(leftover):
                os.unlink(leftover)
    return out


def _load(path: Path, args_size: int) -> ctypes.CDLL:
    """Loads a verified build whose argument block has `args_size` bytes (that of the caller's ctypes mirror)."""
    if not _verified(path):
        raise RuntimeError(f"{path} does not match the hash recorded when it was built; not loaded")
    lib = ctypes.CDLL(str(path))
    lib.hfm_abi_version.restype = ctypes.c_int
    lib.hfm_args_size.restype = ctypes.c_int64
    if lib.hfm_abi_version() != ABI_VERSION or lib.hfm_args_size() != args_size:
        raise RuntimeError("hf_maxsup kernel ABI mismatch")
    return lib


def build_and_load(args_size: int) -> Build:
    """Builds the kernel (or finds a verified build) and loads it, trying the flag sets in turn.

    Args:
        args_size (`int`): the size of the caller's mirror of `hfm_args`, which the library must share.

    Returns:
        [`Build`]: the library, or why there is none (naming `HF_MAXSUP_CFLAGS` and `CC` when they are set).
    """
    cc, why_not = _compiler()
    if cc is None:
        return Build(error=why_not)
    cache, cache_problem = _usable_cache_dir()
    flag_sets = [shlex.split(os.environ["HF_MAXSUP_CFLAGS"])] if os.environ.get("HF_MAXSUP_CFLAGS") else _FLAG_SETS
    errors = [cache_problem] if cache_problem else []
    for extra in flag_sets:
        try:
            out = _build(cache, cc, extra)
            lib = _load(out, args_size)
        except (OSError, RuntimeError) as err:
            errors.append(str(err))
            continue
        return Build(lib, str(out), "; ".join(errors) or None)  # e.g. -march=native rejected: in kernel_info()
    hints = [name for name in ("HF_MAXSUP_CFLAGS", "CC") if os.environ.get(name, "").strip()]
    hint = f" (check {' and '.join(hints)})" if hints else ""
    return Build(error="the C kernel failed to build" + hint + ": " + "; ".join(errors))
