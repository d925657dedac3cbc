"""The loop hands every recipe field to the part that uses it (no model is trained here)."""
from conftest import TINY_RECIPE

from selfplay import loop as loop_module
from selfplay.distributed.local import LocalPlacement
from selfplay.recipe import load


class _Captured(Exception):
    pass


class _Engine:
    def close(self):
        pass


def test_the_trainer_receives_the_losss_reduction_beta_and_name(tmp_path, monkeypatch):
    # A recipe field that the trainer never sees is accepted and silently ignored: this once
    # happened to loss.reduction.
    captured = {}

    def trainer(self, model_dir, config, **options):
        captured.update(options)
        raise _Captured

    monkeypatch.setattr(LocalPlacement, "trainer", trainer)
    monkeypatch.setattr(LocalPlacement, "rollout", lambda self, *args, **kwargs: _Engine())
    recipe = load(TINY_RECIPE, ["loss.reduction=active", "gamma.value=0.3",
                                "rollout.engine=hf"])
    try:
        loop_module.Loop(recipe, tmp_path / "run", progress=False)
    except _Captured:
        pass
    assert captured["reduction"] == "active"
    assert captured["loss_name"] == "repo" and captured["beta"] is None
