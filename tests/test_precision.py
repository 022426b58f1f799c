"""`dtype: auto` picks what the hardware runs fast; an explicit dtype wins; the choice is recorded."""

from __future__ import annotations

import pytest

from r2w.config import load_config
from r2w.precision import resolve_dtype


def test_forced_no_bf16_gives_float32(monkeypatch, tmp_path):
    monkeypatch.setenv("R2W_CPU_FLAGS", "sse4_2,avx,avx2,fma")  # an AVX2-only CPU (AMD EPYC kind)
    cfg = load_config("demo", {"data_dir": str(tmp_path)})
    assert cfg.models.dtype == "float32" and "no native bf16" in cfg.models.dtype_reason
    assert cfg.distill.bf16 is False  # no bf16 autocast in training either


@pytest.mark.parametrize("flag", ["avx512_bf16", "amx_bf16"])
def test_native_bf16_cpu_gives_bfloat16(monkeypatch, tmp_path, flag):
    monkeypatch.setenv("R2W_CPU_FLAGS", f"avx2,avx512f,{flag}")
    cfg = load_config("demo", {"data_dir": str(tmp_path)})
    assert cfg.models.dtype == "bfloat16" and flag in cfg.models.dtype_reason and cfg.distill.bf16 is True


def test_explicit_dtype_wins(monkeypatch, tmp_path):
    monkeypatch.setenv("R2W_CPU_FLAGS", "avx2")
    cfg = load_config("demo", {"data_dir": str(tmp_path), "models": {"dtype": "bfloat16"}, "distill": {"bf16": True}})
    assert cfg.models.dtype == "bfloat16" and cfg.models.dtype_reason == "" and cfg.distill.bf16 is True


def test_cuda_decides_when_present():
    assert resolve_dtype("auto", cuda=True) == ("bfloat16", "auto: CUDA with bf16")
    assert resolve_dtype("auto", cuda=False)[0] == "float32"
    assert resolve_dtype("float32", cuda=True) == ("float32", "set in the config")
