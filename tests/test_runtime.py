"""The process environment: the accelerator follows the hardware; the user's choice wins."""
import os

import pytest
import torch

from selfplay import runtime


@pytest.mark.parametrize("has_gpu, expected", [(True, "cuda"), (False, "cpu")])
def test_accelerator_follows_the_hardware(monkeypatch, has_gpu, expected):
    monkeypatch.delenv("DS_ACCELERATOR", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: has_gpu)
    assert runtime.choose_accelerator() == expected
    assert os.environ["DS_ACCELERATOR"] == expected


def test_the_users_accelerator_wins(monkeypatch):
    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert runtime.choose_accelerator() == "cpu"
    assert os.environ["DS_ACCELERATOR"] == "cpu"


def test_environment_defaults_leave_the_accelerator_to_the_hardware(monkeypatch):
    monkeypatch.delenv("DS_ACCELERATOR", raising=False)
    runtime.configure_environment()
    assert "DS_ACCELERATOR" not in os.environ


def test_environment_defaults_keep_the_users_values(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "7")
    runtime.configure_environment()
    runtime.vllm_cpu_environment(kv_cache_gb=2)
    assert os.environ["OMP_NUM_THREADS"] == "3"
    assert os.environ["VLLM_CPU_KVCACHE_SPACE"] == "7"
