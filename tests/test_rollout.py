"""Rollout engines: seeded sampling, and in-memory weight sync that the engine really uses."""
import pytest
import torch

from selfplay.rollout import build_engine
from selfplay.types import SamplingConfig
from selfplay.train.trainer import Trainer
from selfplay.recipe import TrainConfig
from test_train import make_pairs

SAMPLING = SamplingConfig(n=3, max_new_tokens=12)
PROMPTS = ["echo a b c d:", "echo e f g h:"]
# fp32 engine vs fp32 trainer: the remaining difference is summation order (measured ~1e-6).
LOGPROB_TOLERANCE = 1e-4


@pytest.fixture(scope="module", params=["vllm", "hf"])
def engine(request, tiny_model_dir):
    engine = build_engine(request.param, str(tiny_model_dir), dtype="float32", seed=0,
                          max_model_len=128, kv_cache_gb=1)
    # Not closed: closing vLLM tears down the process group that later trainers in this
    # process would share, as they do in a run.
    return engine


def token_ids(rollouts):
    return [c.token_ids for r in rollouts for c in r.completions]


def test_same_seed_same_completions_other_seed_other(engine):
    first = engine.generate(PROMPTS, SAMPLING, seed=11)
    assert token_ids(first) == token_ids(engine.generate(PROMPTS, SAMPLING, seed=11))
    assert token_ids(first) != token_ids(engine.generate(PROMPTS, SAMPLING, seed=12))
    assert [len(r.completions) for r in first] == [3, 3]
    assert all(0 < len(c.token_ids) <= 12 for r in first for c in r.completions)


def test_sampling_leaves_the_callers_rng_alone(engine):
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    engine.generate(PROMPTS, SAMPLING, seed=1)
    assert torch.equal(torch.rand(3), expected)


def test_after_sync_engine_logprobs_match_the_trainers(engine, tiny_model_dir):
    config = TrainConfig(lr=5e-3, micro_batch_size=4, warmup_ratio=0.0, lr_schedule="constant")
    trainer = Trainer(str(tiny_model_dir), config, loss_name="repo", beta=None, seed=0,
                      total_steps=10, pad_id=0)
    pairs = make_pairs(8)
    for iteration in range(1, 4):
        trainer.train(pairs, gamma=1.0, iteration=iteration)
    probe = pairs[0]
    trainer.engine.eval()
    with torch.no_grad():
        from selfplay.train.logps import pad_batch
        batch = pad_batch([probe.prompt_ids + probe.chosen.token_ids], [len(probe.prompt_ids)], 0)
        trainer_mean = trainer.engine(**batch).item()

    before = engine.sequence_logprobs(probe.prompt_ids, probe.chosen.token_ids)
    engine.update_weights(trainer.named_weights())
    after = engine.sequence_logprobs(probe.prompt_ids, probe.chosen.token_ids)
    mean = lambda values: sum(values) / len(values)  # noqa: E731
    assert abs(mean(after) - trainer_mean) < LOGPROB_TOLERANCE
    assert abs(mean(before) - trainer_mean) > 100 * LOGPROB_TOLERANCE

