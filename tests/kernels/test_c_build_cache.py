"""The C kernel's build cache: atomic and reused, private, verified before loading, and loud when it falls back."""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
import tempfile
import threading

import pytest
import torch

from hf_maxsup import kernels
from hf_maxsup.kernels import _c, _cbuild, dispatch

FAST = ["-O0"]  # these tests are about the cache, not the code: keep the builds quick
ARGS_SIZE = ctypes.sizeof(_c._Args)


@pytest.fixture
def cc():
    compiler, _ = _cbuild._compiler()
    if compiler is None:
        pytest.skip("no C compiler")
    return compiler


@pytest.fixture
def private_cache(tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir(mode=0o700)
    return cache


@pytest.fixture
def private_tmp(tmp_path, monkeypatch):
    """The temporary directory the fallback folders go to, private to the test."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    return tmp


@pytest.fixture
def fresh_state(monkeypatch):
    """A process that has not tried to build yet (restored afterwards)."""
    for name, value in (("tried", False), ("lib", None), ("path", None), ("error", None)):
        monkeypatch.setattr(_c._State, name, value)
    monkeypatch.setattr(dispatch, "_warned", set())


def test_concurrent_builds_publish_one_verified_library_and_reuse_it(cc, private_cache):
    paths, errors = [], []

    def build():
        try:
            paths.append(_cbuild._build(private_cache, cc, FAST))
        except Exception as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=build) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(set(paths)) == 1
    (lib_path,) = set(paths)
    assert sorted(p.name for p in private_cache.iterdir()) == sorted([lib_path.name, lib_path.stem + ".sha256"])
    mtime = lib_path.stat().st_mtime_ns
    assert _cbuild._build(private_cache, cc, FAST) == lib_path and lib_path.stat().st_mtime_ns == mtime  # reused
    assert _cbuild._load(lib_path, ARGS_SIZE).hfm_abi_version() == _cbuild.ABI_VERSION


def test_a_planted_library_is_never_loaded(cc, private_cache, tmp_path):
    """A library at the build's path without the build's hash (here one whose constructor would leave a marker) is
    replaced by a fresh build, and its constructor never runs."""
    marker = tmp_path / "constructor-ran"
    source = tmp_path / "planted.c"
    source.write_text(
        "#include <stdio.h>\n__attribute__((constructor)) static void run(void) "
        f'{{ FILE *f = fopen("{marker}", "w"); if (f) fclose(f); }}\n'
    )
    target = private_cache / f"fused_loss-{_cbuild._build_key(cc, _cbuild._BASE_FLAGS + FAST)}.so"
    subprocess.run([*cc, "-shared", "-fPIC", str(source), "-o", str(target)], check=True)
    (private_cache / (target.stem + ".sha256")).write_text("0" * 64)
    built = _cbuild._build(private_cache, cc, FAST)
    assert built == target and _cbuild._load(built, ARGS_SIZE).hfm_abi_version() == _cbuild.ABI_VERSION
    assert not marker.exists()


def test_a_truncated_library_is_rebuilt_not_loaded(cc, private_cache):
    built = _cbuild._build(private_cache, cc, FAST)
    built.write_bytes(built.read_bytes()[:4096])  # what a full disk or a killed copy leaves: SIGBUS if loaded
    with pytest.raises(RuntimeError, match="does not match the hash"):
        _cbuild._load(built, ARGS_SIZE)
    assert _cbuild._build(private_cache, cc, FAST) == built and _cbuild._load(built, ARGS_SIZE).hfm_args_size() > 0


def test_a_library_writable_by_others_is_not_trusted(cc, private_cache):
    built = _cbuild._build(private_cache, cc, FAST)
    built.chmod(0o666)
    assert not _cbuild._verified(built)


@pytest.mark.parametrize("mode", [0o777, 0o770])
def test_a_shared_cache_directory_is_refused(tmp_path, monkeypatch, mode, private_tmp):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(mode)  # e.g. the predictable /tmp/hf_maxsup-<uid> another user could have created
    monkeypatch.setenv("HF_MAXSUP_CACHE", str(shared))
    used, problem = _cbuild._usable_cache_dir()
    assert used != shared and "writable by other users" in problem and "HF_MAXSUP_CACHE" in problem
    assert (used.stat().st_mode & 0o777) == 0o700 and used.stat().st_uid == os.getuid()
    assert not any(used.iterdir())


def test_a_new_cache_directory_is_private(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_MAXSUP_CACHE", str(tmp_path / "new" / "cache"))
    used, problem = _cbuild._usable_cache_dir()
    assert problem is None and used == tmp_path / "new" / "cache" and (used.stat().st_mode & 0o777) == 0o700


def test_bad_cflags_fall_back_with_a_warning_naming_the_fix(cc, fresh_state, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("HF_MAXSUP_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_MAXSUP_CFLAGS", "-fno-such-flag-hf-maxsup")
    with caplog.at_level("WARNING", logger="hf_maxsup.kernels"):
        loss = kernels.fused_loss(torch.randn(4, 5), torch.zeros(4, dtype=torch.long), loss="maxsup", alpha=0.1)
    assert torch.isfinite(loss)
    info = kernels.kernel_info()
    assert info["backend"] == "torch" and "HF_MAXSUP_CFLAGS" in info["reasons"]["c"]
    assert any("HF_MAXSUP_CFLAGS" in r.getMessage() for r in caplog.records)


def test_an_unusable_cache_is_reported_once(cc, fresh_state, tmp_path, monkeypatch, caplog, private_tmp):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    monkeypatch.setenv("HF_MAXSUP_CACHE", str(shared))
    monkeypatch.setenv("HF_MAXSUP_CFLAGS", "-O0")
    with caplog.at_level("WARNING", logger="hf_maxsup.kernels"):
        for _ in range(2):
            kernels.fused_loss(torch.randn(4, 5), torch.zeros(4, dtype=torch.long), loss="ce")
    notes = [r.getMessage() for r in caplog.records if "not usable" in r.getMessage()]
    assert len(notes) == 1 and "HF_MAXSUP_CACHE" in notes[0]
    assert kernels.kernel_info()["backend"] == "c" and "not usable" in kernels.kernel_info()["c"]["note"]
    assert not any(shared.iterdir())


def test_fallbacks_reuse_one_private_folder_and_leave_no_other(cc, fresh_state, tmp_path, monkeypatch, private_tmp):
    """Every process whose cache is unusable builds into the same private `hf_maxsup-<uid>` folder and reuses the
    build there, instead of leaving a new folder in the temporary directory each time."""
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    monkeypatch.setenv("HF_MAXSUP_CACHE", str(shared))
    monkeypatch.setenv("HF_MAXSUP_CFLAGS", "-O0")
    paths = []
    for _ in range(2):  # two processes, as far as the build is concerned
        monkeypatch.setattr(_c._State, "tried", False)
        assert kernels.kernel_info()["backend"] == "c"
        paths.append(_c.build_info()["path"])
    assert paths[0] == paths[1]
    assert [p.name for p in private_tmp.iterdir()] == [f"hf_maxsup-{os.getuid()}"]
    assert (private_tmp / f"hf_maxsup-{os.getuid()}").stat().st_mode & 0o777 == 0o700


def test_a_fallback_folder_that_is_not_private_is_not_used_and_the_fresh_one_is_removed(private_tmp):
    planted = private_tmp / f"hf_maxsup-{os.getuid()}"
    planted.mkdir()
    planted.chmod(0o777)  # as another user could have left it
    script = (
        "import tempfile; from hf_maxsup.kernels import _cbuild; "
        f"tempfile.tempdir = {str(private_tmp)!r}; path, note = _cbuild._fallback_dir(); print(path); print(note)"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout.split("\n")
    assert out[0] != str(planted) and "writable by other users" in out[1] and "removed when it exits" in out[1]
    assert sorted(p.name for p in private_tmp.iterdir()) == [planted.name]  # the fresh folder is gone


def test_cc_is_honoured_and_named_when_it_cannot_build(cc, fresh_state, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("HF_MAXSUP_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("CC", "/nonexistent/cc")
    with caplog.at_level("WARNING", logger="hf_maxsup.kernels"):
        kernels.fused_loss(torch.randn(4, 5), torch.zeros(4, dtype=torch.long), loss="ce")
    info = kernels.kernel_info()
    assert info["backend"] == "torch" and "CC='/nonexistent/cc' names no compiler" in info["reasons"]["c"]
    assert any("CC='/nonexistent/cc'" in r.getMessage() for r in caplog.records)
    for name, value in (("tried", False), ("lib", None), ("error", None)):
        monkeypatch.setattr(_c._State, name, value)
    monkeypatch.setattr(dispatch, "_warned", set())
    monkeypatch.setenv("CC", "/bin/false")  # a compiler that fails without a word
    with caplog.at_level("WARNING", logger="hf_maxsup.kernels"):
        kernels.fused_loss(torch.randn(4, 5), torch.zeros(4, dtype=torch.long), loss="ce")
    reason = kernels.kernel_info()["reasons"]["c"]
    assert (
        "(check CC)" in reason and "CC='/bin/false'" in reason and "exit status 1" in reason and "no output" in reason
    )
    assert any("CC='/bin/false'" in r.getMessage() and "no output" in r.getMessage() for r in caplog.records)
