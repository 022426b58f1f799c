"""`dtype: auto` and `train_threads: auto` pick what the hardware runs fast; an explicit setting wins."""

from __future__ import annotations

import pytest

from r2w.config import load_config
from r2w.precision import resolve_dtype
from r2w.runtime import choose_threads, fastest_threads, torch_threads


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


# ------------------------------------------------------------------------ training threads (runtime.train_threads)


@pytest.mark.parametrize(
    ("seconds", "expected"),
    [({1: 1.0, 2: 0.55}, 2), ({1: 1.0, 2: 0.9}, 1), ({1: 1.0, 2: 6.0}, 1), ({1: 1.0, 4: 0.3}, 4)],
)
def test_more_threads_are_kept_only_when_the_probe_shows_them_faster(seconds, expected):
    chosen, why = choose_threads(seconds)
    assert chosen == expected and f"{max(seconds)} threads ran" in why


def test_the_thread_probe_picks_a_real_count_and_leaves_torch_as_it_was():
    import os

    import torch

    before = torch.get_num_threads()
    chosen, why = fastest_threads("auto", size=256, repeats=1)
    assert chosen in {1, len(os.sched_getaffinity(0))} and why.startswith("auto")
    assert torch.get_num_threads() == before
    assert fastest_threads(3) == (3, "set in the config")
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


def test_train_threads_is_validated_and_left_out_of_the_config_hash():
    from r2w.config import ConfigError

    assert load_config("test", {"runtime.train_threads": 2}).hash == load_config("test").hash
    with pytest.raises(ConfigError, match="train_threads"):
        load_config("test", {"runtime.train_threads": 0})
