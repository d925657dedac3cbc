import pytest

from selfplay import recipe as recipe_mod
from selfplay.recipe import RecipeError, apply_overrides, load

from conftest import REPO, TINY_RECIPE


def test_tiny_recipe_loads_and_resolves_paths_beside_the_recipe():
    recipe = load(TINY_RECIPE)
    assert recipe.data.prompts == str(REPO / "recipes" / "data" / "letters-train.jsonl")
    assert recipe.loss.name == "repo" and recipe.rollout.engine == "vllm"


def test_overrides_are_typed_by_yaml():
    recipe = load(TINY_RECIPE, ["train.lr=1e-5", "loop.iterations=3", "data.shuffle=false"])
    assert recipe.train.lr == 1e-5 and recipe.loop.iterations == 3
    assert recipe.data.shuffle is False


def problems_of(tmp_path, text, overrides=()):
    path = tmp_path / "r.yaml"
    path.write_text(text)
    with pytest.raises(RecipeError) as error:
        load(path, list(overrides))
    return error.value.problems


MINIMAL = "model: {path: builtin:tiny}\ndata: {prompts: p.jsonl}\nreward: {name: letters}\n"


def test_unknown_key_names_the_field(tmp_path):
    assert problems_of(tmp_path, MINIMAL + "train: {lrr: 1}\n") == ["train.lrr: unknown key"]


def test_out_of_range_value_names_field_and_value(tmp_path):
    [problem] = problems_of(tmp_path, MINIMAL, ["train.lr=-1"])
    assert problem.startswith("train.lr: ") and "greater than 0" in problem and "-1" in problem


def test_wrong_type_and_missing_section_each_get_a_line(tmp_path):
    problems = problems_of(tmp_path, "model: {path: x}\ndata: {prompts: p}\n",
                           ["rollout.n=many"])
    assert any(p.startswith("rollout.n: ") for p in problems)
    # Cross-field rules run once the fields themselves are valid.
    problems = problems_of(tmp_path, "model: {path: x}\ndata: {prompts: p}\n")
    assert problems == ["reward: required (online mode and evaluation score completions)"]
    offline = tmp_path / "offline.yaml"
    offline.write_text("mode: offline\nmodel: {path: x}\ndata: {prompts: p}\n")
    assert load(offline).reward is None


def test_bad_choice_lists_problem(tmp_path):
    [problem] = problems_of(tmp_path, MINIMAL, ["loss.name=ppo"])
    assert problem.startswith("loss.name: ") and "repo" in problem


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(RecipeError, match="recipe file not found"):
        load(tmp_path / "nope.yaml")
    assert problems_of(tmp_path, "model: [unclosed\n")[0].startswith("recipe ")


def test_override_syntax_errors():
    with pytest.raises(RecipeError, match="expected KEY=VALUE"):
        apply_overrides({}, ["train.lr"])


def test_resolved_recipe_round_trips_and_diff_names_fields(tmp_path):
    recipe = load(TINY_RECIPE)
    recipe_mod.save(recipe, tmp_path / "saved.yaml")
    again = load(tmp_path / "saved.yaml")
    assert recipe_mod.diff(recipe, again) == []
    changed = load(tmp_path / "saved.yaml", ["loop.iterations=99", "train.lr=0.5"])
    assert recipe_mod.diff(recipe, changed) == ["loop.iterations", "train.lr"]


def test_every_field_has_help_text():
    rows = recipe_mod.field_help()
    assert len(rows) > 30
    assert all(description for _, description, _, _ in rows), [r[0] for r in rows if not r[1]]
    required = {name for name, _, _, is_required in rows if is_required}
    assert required == {"model.path", "data.prompts", "reward.name"}


# --- the gamma section: one model per controller --------------------------------------------
def test_a_field_of_another_controller_is_an_error_naming_it(tmp_path):
    problems = problems_of(tmp_path, MINIMAL + "gamma: {controller: fixed, band: 0.2}\n")
    assert problems == ["gamma.band: not a field of the fixed controller (its fields: value)"]
    problems = problems_of(tmp_path, MINIMAL + "gamma: {controller: adaptive, value: 0.4}\n")
    assert problems[0].startswith("gamma.value: not a field of the adaptive controller")


def test_an_unknown_controller_lists_the_choices(tmp_path):
    assert problems_of(tmp_path, MINIMAL + "gamma: {controller: fxed}\n") == [
        "gamma.controller: must be one of fixed, schedule, adaptive, gammapo, got 'fxed'"]


def test_gamma_defaults_to_fixed_and_each_controller_keeps_only_its_fields(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(MINIMAL + "gamma: {value: 0.3}\n")
    assert load(path).gamma.model_dump() == {"controller": "fixed", "value": 0.3}
    path.write_text(MINIMAL)
    assert load(path).gamma.model_dump() == {"controller": "fixed", "value": 0.5}
    saved = tmp_path / "saved.yaml"
    recipe_mod.save(load(path, ["gamma.controller=schedule"]), saved)
    assert load(saved).gamma.model_dump() == {"controller": "schedule", "start": 1.0,
                                              "end": 0.2, "shape": "linear"}


def test_switching_controller_on_the_command_line_starts_from_its_defaults():
    # tiny.yaml says `gamma: {controller: fixed, value: 0.5}`; `value` is not adaptive's field.
    recipe = load(TINY_RECIPE, ["gamma.band_z=1.0", "gamma.controller=adaptive"])
    assert recipe.gamma.controller == "adaptive" and recipe.gamma.band_z == 1.0
    assert load(TINY_RECIPE, ["gamma.controller=fixed", "gamma.value=0.2"]).gamma.value == 0.2


def test_the_recipe_accepts_exactly_the_registries_names():
    import typing

    from rewarders.base import BUILTINS, rewarder_class
    from selfplay.control import CONFIGS, CONTROLLERS
    from selfplay.losses import available_losses
    from selfplay.recipe import LossConfig

    assert set(typing.get_args(LossConfig.model_fields["name"].annotation)) == set(
        available_losses())
    tags = {config.model_fields["controller"].default for config in CONFIGS.values()}
    assert tags == set(CONTROLLERS) == set(CONFIGS)
    for name in BUILTINS:  # every built-in's short name resolves to a class
        assert isinstance(rewarder_class(name), type)


# --- γ-PO needs SimPO and takes its β; RePO's reduction ---------------------------------------
def test_gammapo_with_a_loss_other_than_simpo_is_refused(tmp_path):
    for loss in ("repo", "repo++", "dpo"):
        problems = problems_of(tmp_path, MINIMAL + f"loss: {{name: {loss}}}\n"
                               "gamma: {controller: gammapo}\n")
        assert problems == [f"gamma.controller: gammapo is SimPO with per-pair targets, it "
                            f"needs loss.name: simpo (got {loss})"]


def test_gammapo_targets_take_the_simpo_loss_beta_and_the_run_seed(tmp_path):
    from selfplay.control import build_controller, build_pair_targets
    from selfplay.losses import get_loss

    def targets_of(recipe):  # as the loop builds the trainer's
        beta = get_loss(recipe.loss.name).resolve_beta(recipe.loss.beta)
        return build_pair_targets(recipe.gamma, beta, recipe.loop.seed)

    path = tmp_path / "r.yaml"
    path.write_text(MINIMAL + "loss: {name: simpo, beta: 10}\ngamma: {controller: gammapo}\n"
                    "loop: {seed: 3}\n")
    recipe = load(path)
    targets = targets_of(recipe)
    assert targets.beta == 10.0 and targets.tau == 10.0
    assert build_controller(recipe.gamma, recipe.loop.iterations).value == 0.5
    assert targets.queue != targets_of(load(path, ["loop.seed=4"])).queue
    # loss.beta omitted: simpo's default.
    recipe = load(path, ["loss.beta=null"])
    assert targets_of(recipe).beta == 2.0
    assert targets_of(load(path, ["gamma.controller=fixed", "loss.name=repo",
                                  "loss.beta=null"])) is None
    assert recipe.to_dict()["gamma"] == {"controller": "gammapo", "value": 0.5, "tau": 10.0}
    problems = problems_of(tmp_path, MINIMAL + "loss: {name: simpo}\n"
                           "gamma: {controller: gammapo, beta: 10}\n")
    assert problems == ["gamma.beta: not a field of the gammapo controller (its fields: value, "
                        "tau)"]


def test_the_active_reduction_is_repo_only(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(MINIMAL)
    assert load(path).loss.reduction == "all"
    assert load(path, ["loss.reduction=active"]).loss.reduction == "active"
    problems = problems_of(tmp_path, MINIMAL + "loss: {name: simpo, reduction: active}\n")
    assert problems == ["loss.reduction: active applies to loss.name: repo only (got simpo); "
                        "remove loss.reduction"]
    assert problems_of(tmp_path, MINIMAL, ["loss.reduction=some"])[0].startswith(
        "loss.reduction: input should be 'all' or 'active'")


def test_all_levels_with_a_decaying_schedule_needs_a_pair_quota(tmp_path):
    [problem] = problems_of(tmp_path, MINIMAL + "pairs: {strategy: all_levels}\n")
    assert problem.startswith("pairs.strategy: all_levels gives a varying number of pairs, so "
                              "train.lr_schedule: cosine cannot know its length")
    path = tmp_path / "r.yaml"
    path.write_text(MINIMAL + "pairs: {strategy: all_levels, per_iteration: 48}\n")
    assert load(path).pairs_per_iteration() == 48  # the schedule is planned for the quota
    assert load(path, ["pairs.per_iteration=null", "train.lr_schedule=constant",
                       "data.prompts_per_iteration=16"]
                ).pairs_per_iteration() == 16 * 4 * 3 // 2  # n = 4: up to 6 pairs a prompt
    assert load(path, ["pairs.strategy=best_worst", "pairs.per_iteration=null",
                       "data.prompts_per_iteration=16"]).pairs_per_iteration() == 16


def test_a_run_directory_written_before_a_field_was_removed_still_loads(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(MINIMAL + "logging: {progress: true, save_rollouts: false}\n")
    assert load(path).logging.save_rollouts is False


@pytest.mark.parametrize("overrides, problem", [
    (["distributed.backend=ray", "distributed.gpus_per_engine=0.5"],
     "distributed.gpus_per_engine: 0.5: an engine takes whole GPUs"),
    (["distributed.backend=ray", "distributed.gpus_per_trainer=2"],
     "distributed.gpus_per_trainer: 2: a trainer rank takes 0 GPUs (CPU) or 1"),
    (["distributed.backend=ray", "distributed.gpus_per_engine=2"],
     "distributed.gpus_per_engine: 2 GPUs need rollout.tensor_parallel_size: 2 (it is 1)"),
    (["rollout.tensor_parallel_size=2"],
     "rollout.tensor_parallel_size: 2 shards an engine over GPUs: it needs "
     "distributed.backend: ray and gpus_per_engine: 2"),
])
def test_gpu_placements_that_would_fail_or_idle_on_the_gpus_are_refused(overrides, problem):
    with pytest.raises(RecipeError) as error:
        load(TINY_RECIPE, overrides)
    assert any(problem in line for line in error.value.problems), error.value.problems


def test_an_engine_sharded_over_its_gpus_is_accepted():
    recipe = load(TINY_RECIPE, ["distributed.backend=ray", "distributed.gpus_per_engine=2",
                                "rollout.tensor_parallel_size=2"])
    assert recipe.rollout.tensor_parallel_size == 2


def test_a_local_recipe_needs_no_ray_installed(monkeypatch):
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "ray" else real(name, *a))
    assert load(TINY_RECIPE).distributed.backend == "local"
    with pytest.raises(RecipeError, match="needs `pip install ray`"):
        load(TINY_RECIPE, ["distributed.backend=ray"])
