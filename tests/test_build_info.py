"""Build facts and the CUDA build checks that run without a GPU: build_info's CUDA fields, the import-time
check that a CUDA build matches torch's CUDA, and tools/check_cuda_compile.py's verdicts (skip without nvcc,
fail and name the file on a compile error)."""
from __future__ import annotations

import importlib.util
import os
import shutil

import pytest
import torch

import sparseconv

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_build_info_has_cuda_fields():
    info = sparseconv.build_info()
    assert {"cuda", "cuda_version", "cuda_archs", "torch_cuda_runtime"} <= set(info)
    if info["cuda"]:
        major, minor = info["cuda_version"].split(".")
        assert major.isdigit() and minor.isdigit() and info["cuda_archs"]
    else:
        assert info["cuda_version"] is None and info["cuda_archs"] == ""


def test_cpu_build_passes_the_cuda_check():
    sparseconv._check_cuda_build({"cuda": False, "cuda_version": None})


def test_cuda_build_must_match_torch_cuda(monkeypatch):
    monkeypatch.setattr(torch.version, "cuda", "12.4")
    sparseconv._check_cuda_build({"cuda": True, "cuda_version": "12.8"})  # same major: fine
    with pytest.raises(RuntimeError, match=r"CUDA 13\.0.*12\.4.*rebuild.*FORCE_CUDA=1"):
        sparseconv._check_cuda_build({"cuda": True, "cuda_version": "13.0"})
    monkeypatch.setattr(torch.version, "cuda", None)
    with pytest.raises(RuntimeError, match="has no CUDA.*rebuild"):
        sparseconv._check_cuda_build({"cuda": True, "cuda_version": "13.0"})


def _checker():
    spec = importlib.util.spec_from_file_location("check_cuda_compile",
                                                  os.path.join(ROOT, "tools", "check_cuda_compile.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_compile_check_skips_without_nvcc(monkeypatch, capsys):
    mod = _checker()
    monkeypatch.setattr(mod, "find_nvcc", lambda: None)
    monkeypatch.setattr("sys.argv", ["check_cuda_compile.py"])
    assert mod.main() == 0
    assert "SKIPPED - nvcc not found" in capsys.readouterr().out


def test_compile_check_fails_and_names_the_file(tmp_path, monkeypatch, capsys):
    mod = _checker()
    if mod.find_nvcc() is None:
        pytest.skip("nvcc not installed")
    bad = tmp_path / "broken_kernel.cu"
    bad.write_text('__global__ void k(float* p) { int x = "not an int"; p[0] = x; }\n')
    monkeypatch.setattr("sys.argv", ["check_cuda_compile.py", str(bad)])
    assert mod.main() == 1
    out = capsys.readouterr().out
    assert "FAILED" in out and "broken_kernel.cu" in out


@pytest.mark.skipif(shutil.which("c++") is None, reason="no C++ compiler")
def test_setup_arch_list_default(monkeypatch):
    spec = importlib.util.spec_from_file_location("sparseconv_setup", os.path.join(ROOT, "setup.py"))
    mod = importlib.util.module_from_spec(spec)
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        spec.loader.exec_module(mod)  # setup() itself only runs under __main__
    finally:
        os.chdir(cwd)
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "8.6;9.0+PTX")
    assert mod.cuda_arch_list() == "8.6;9.0+PTX"
    monkeypatch.delenv("TORCH_CUDA_ARCH_LIST")
    if not torch.cuda.is_available():
        assert mod.cuda_arch_list() == "8.0;9.0"
    assert "-DSPARSECONV_WITH_CUDA" in mod.nvcc_flags()
