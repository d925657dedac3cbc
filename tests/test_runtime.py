"""The process environment: the accelerator follows the hardware; the user's choice wins;
a normal run hides dependencies' chatter but never an error."""
import logging
import os
import warnings
from unittest import mock

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


@pytest.fixture
def isolated_logging():
    """configure_logging changes process-wide state: put back env, filters and levels."""
    levels = {name: logging.getLogger(name).level for name in runtime.NOISY_LIBRARIES}
    with mock.patch.dict(os.environ), warnings.catch_warnings():
        warnings.simplefilter("always")  # whatever -W or pytest set, every warning shows
        for key in [*runtime.QUIET_ENVIRONMENT, "SELFPLAY_LOG"]:
            os.environ.pop(key, None)
        for name in runtime.NOISY_LIBRARIES:  # as a fresh process has them (conftest quiets)
            logging.getLogger(name).setLevel(logging.NOTSET)
        yield
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)


def warning_shown(module: str) -> bool:
    with warnings.catch_warnings(record=True) as caught:  # keeps the filters in place
        warnings.warn_explicit("deprecated", FutureWarning, "file.py", 1, module=module,
                               registry={})
    return bool(caught)


def test_quiet_run_hides_dependency_chatter_but_not_errors(isolated_logging):
    runtime.configure_logging(verbose=False)
    for name in ("vllm", "deepspeed", "torch", "transformers", "datasets", "ray"):
        logger = logging.getLogger(name)
        assert logger.getEffectiveLevel() == logging.ERROR
        assert logger.isEnabledFor(logging.ERROR)
    assert logging.getLogger("vllm.triton_utils.importing").getEffectiveLevel() == logging.ERROR
    assert os.environ["VLLM_LOGGING_LEVEL"] == "ERROR"
    assert os.environ["TRANSFORMERS_VERBOSITY"] == "error"
    assert not warning_shown("vllm.triton_utils.dispatcher")
    assert not warning_shown("torch.distributed")
    assert warning_shown("selfplay.loop")  # the project's own warnings still show
    assert warning_shown("torchvision")  # a name that only starts like a library's


@pytest.mark.parametrize("verbose, env", [(True, {}), (False, {"SELFPLAY_LOG": "debug"})])
def test_verbose_leaves_every_library_as_it_is(isolated_logging, verbose, env):
    os.environ.update(env)
    logging.getLogger("vllm").setLevel(logging.INFO)
    runtime.configure_logging(verbose=verbose)
    assert logging.getLogger("vllm").level == logging.INFO
    assert logging.getLogger("deepspeed").level == logging.NOTSET
    assert "VLLM_LOGGING_LEVEL" not in os.environ
    assert warning_shown("vllm.triton_utils.dispatcher")
    assert runtime.is_verbose()  # worker processes inherit the choice


def test_quiet_run_keeps_the_users_library_settings(isolated_logging):
    os.environ["VLLM_LOGGING_LEVEL"] = "DEBUG"
    runtime.configure_logging(verbose=False)
    assert os.environ["VLLM_LOGGING_LEVEL"] == "DEBUG"


@pytest.mark.parametrize("verbose", [False, True])
def test_dependency_prints_are_swallowed_unless_verbose(isolated_logging, capsys, verbose):
    runtime.configure_logging(verbose=verbose)
    with runtime.quiet_stdout():
        print("DeepSpeed op built successfully")
    assert ("built successfully" in capsys.readouterr().out) == verbose


@pytest.mark.parametrize("flags, expected", [
    (["avx512_bf16"], "bfloat16"),
    (["amx_bf16", "avx512_bf16"], "bfloat16"),
    ([], "float32"),  # AVX2 alone: bf16 matmuls are far slower than fp32
])
def test_auto_rollout_dtype_is_bf16_only_where_the_cpu_runs_it_fast(monkeypatch, flags, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(runtime, "cpu_bf16_flags", lambda: flags)
    dtype, reason = runtime.rollout_dtype("auto")
    assert dtype == expected
    assert reason.startswith("auto: ") and all(flag in reason for flag in flags)


@pytest.mark.parametrize("requested", ["float32", "bfloat16"])
def test_an_explicit_rollout_dtype_is_kept(monkeypatch, requested):
    monkeypatch.setattr(runtime, "cpu_bf16_flags", lambda: [])
    assert runtime.rollout_dtype(requested) == (requested, "set in the recipe")


@pytest.mark.parametrize("flags, expected", [(["avx512_bf16"], "bf16"), ([], "fp32")])
def test_auto_train_precision_follows_the_same_hardware_rule(monkeypatch, flags, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(runtime, "cpu_bf16_flags", lambda: flags)
    precision, reason = runtime.train_precision("auto")
    assert precision == expected and reason.startswith("auto: ")
    assert runtime.train_precision("bf16") == ("bf16", "set in the recipe")


def test_cpu_bf16_flags_reads_proc_cpuinfo(monkeypatch, tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512_bf16 amx_tile\n")
    real_open = open
    monkeypatch.setattr("builtins.open", lambda path, *a, **k: real_open(
        cpuinfo if path == "/proc/cpuinfo" else path, *a, **k))
    assert runtime.cpu_bf16_flags() == ["avx512_bf16"]
