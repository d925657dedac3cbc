"""The DeepSpeed trainer: exact completion log-probs, real updates, exact save/load."""
import math
import random

import numpy
import pytest
import torch

from selfplay.types import Completion, Pair
from selfplay.recipe import TrainConfig
from selfplay.train.logps import CompletionLogps, pad_batch
from selfplay.train.ranks import init_process_group, interleave
from selfplay.train.schedule import total_optimizer_steps
from selfplay.train.trainer import Trainer


def make_pairs(count, seed=0):
    rng = random.Random(seed)
    pairs = []
    for index in range(count):
        prompt = [1] + [rng.randrange(4, 40) for _ in range(rng.randrange(3, 8))]
        chosen = [rng.randrange(4, 40) for _ in range(rng.randrange(2, 9))]
        rejected = [rng.randrange(4, 40) for _ in range(rng.randrange(2, 9))]
        pairs.append(Pair(index, prompt, Completion("", chosen), Completion("", rejected), 1.0, 0.0))
    return pairs


def make_trainer(model_dir, pair_targets=None, **overrides):
    config = TrainConfig(**{"lr": 1e-3, "micro_batch_size": 4, "warmup_ratio": 0.0,
                            "lr_schedule": "constant", **overrides})
    return Trainer(str(model_dir), config, loss_name="repo", beta=None, seed=0, pad_id=0,
                   iterations=25, pairs_per_iteration=16, pair_targets=pair_targets)


def weights(trainer):
    return {name: tensor.clone() for name, tensor in trainer.named_weights()}


def test_chunked_logps_equal_full_vocabulary_logps_values_and_gradients(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    pairs = make_pairs(3)
    sequences = [p.prompt_ids + p.chosen.token_ids for p in pairs]
    batch = pad_batch(sequences, [len(p.prompt_ids) for p in pairs], pad_id=0)

    chunked = CompletionLogps(model, chunk_tokens=5)(**batch)
    chunked.sum().backward()
    grad_chunked = model.lm_head.weight.grad.clone()
    model.zero_grad()

    logps = model(input_ids=batch["input_ids"],
                  attention_mask=batch["attention_mask"]).logits.log_softmax(-1)
    expected = []
    for row, pair in enumerate(pairs):
        start = len(pair.prompt_ids)
        tokens = pair.chosen.token_ids
        expected.append(torch.stack([logps[row, start - 1 + i, t] for i, t in enumerate(tokens)])
                        .mean())
    expected = torch.stack(expected)
    expected.sum().backward()
    torch.testing.assert_close(chunked, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(grad_chunked, model.lm_head.weight.grad, atol=1e-5, rtol=1e-4)


def test_training_raises_the_margins_of_its_pairs(tiny_model_dir):
    trainer = make_trainer(tiny_model_dir)
    pairs = make_pairs(8)
    before = sum(trainer.margins(pairs)) / 8
    for iteration in range(1, 4):
        stats = trainer.train(pairs, gamma=0.5, iteration=iteration)
    after = sum(trainer.margins(pairs)) / 8
    assert after > before + 0.3, (before, after)
    assert stats.steps == 2 and stats.tokens > 0 and len(stats.margins) == len(stats.gammas) == 8


def test_gradient_accumulation_matches_one_big_batch(tiny_model_dir):
    pairs = make_pairs(6)
    big = make_trainer(tiny_model_dir, micro_batch_size=6, grad_accum=1)
    small = make_trainer(tiny_model_dir, micro_batch_size=2, grad_accum=3)
    big.train(pairs, gamma=0.5, iteration=1)
    small.train(pairs, gamma=0.5, iteration=1)
    a, b = weights(big), weights(small)
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-5


def test_save_then_load_continues_bit_identically(tiny_model_dir, tmp_path):
    pairs = make_pairs(8)
    original = make_trainer(tiny_model_dir)
    original.train(pairs, gamma=0.5, iteration=1)
    original.save(str(tmp_path / "ckpt"))
    restored = make_trainer(tiny_model_dir)
    restored.load(str(tmp_path / "ckpt"))
    for trainer in (original, restored):
        trainer.train(pairs, gamma=0.5, iteration=2)
    a, b = weights(original), weights(restored)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_export_is_a_model_directory_transformers_loads(tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    trainer = make_trainer(tiny_model_dir)
    trainer.train(make_pairs(4), gamma=0.5, iteration=1)
    trainer.export(str(tmp_path / "final"), AutoTokenizer.from_pretrained(tiny_model_dir))
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "final")
    expected = weights(trainer)
    for name, tensor in loaded.named_parameters():
        assert torch.equal(tensor, expected[name])


@pytest.mark.parametrize("stage, precision", [(2, "fp32"), (3, "fp32"), (0, "bf16")])
def test_zero_stages_and_bf16_train(tiny_model_dir, stage, precision):
    trainer = make_trainer(tiny_model_dir, zero_stage=stage, precision=precision)
    pairs = make_pairs(8)
    before = sum(trainer.margins(pairs))
    for iteration in range(1, 4):
        trainer.train(pairs, gamma=0.5, iteration=iteration)
    assert sum(trainer.margins(pairs)) > before
    assert all(torch.isfinite(t).all() for _, t in trainer.named_weights())


def test_total_steps_span_every_window_of_every_epoch_of_the_run():
    config = TrainConfig(micro_batch_size=2, grad_accum=3, epochs_per_iteration=2)
    # 13 pairs in windows of 6: 3 optimizer steps per epoch, 2 epochs, 5 iterations.
    assert total_optimizer_steps(config, iterations=5, pairs_per_iteration=13) == 30


def test_trainer_owns_its_schedule_and_reports_its_learning_rate(tiny_model_dir):
    config = TrainConfig(lr=1e-3, micro_batch_size=2, warmup_ratio=0.0, lr_schedule="linear")
    trainer = Trainer(str(tiny_model_dir), config, loss_name="repo", beta=None, seed=0, pad_id=0,
                      iterations=2, pairs_per_iteration=4)
    assert trainer.total_steps == 4 and trainer.lr == pytest.approx(1e-3)
    trainer.train(make_pairs(4), gamma=0.5, iteration=1)
    # Two of four linear-decay steps taken: half the peak rate is left.
    assert trainer.lr == pytest.approx(0.5e-3)


@pytest.mark.parametrize("loss_name, length_normalised", [("repo", True), ("ipo", False)])
def test_trainer_feeds_each_loss_the_normalisation_it_declares(tiny_model_dir, loss_name,
                                                                length_normalised):
    """IPO's 1/(2β) is a summed log-ratio: its margins are summed log-probs, RePO's per-token."""
    from transformers import AutoModelForCausalLM

    config = TrainConfig(micro_batch_size=2)
    trainer = Trainer(str(tiny_model_dir), config, loss_name=loss_name, beta=None, seed=0,
                      pad_id=0, iterations=1, pairs_per_iteration=4)
    pairs = make_pairs(4)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    expected = []
    for pair in pairs:
        scores = []
        for completion in (pair.chosen.token_ids, pair.rejected.token_ids):
            ids = torch.tensor([pair.prompt_ids + completion])
            with torch.no_grad():
                logps = model(input_ids=ids).logits[0].log_softmax(-1)
            start = len(pair.prompt_ids)
            token_logps = logps[start - 1:-1].gather(-1, ids[0, start:].unsqueeze(-1))
            scores.append(token_logps.mean() if length_normalised else token_logps.sum())
        expected.append((scores[0] - scores[1]).item())
    assert trainer.margins(pairs) == pytest.approx(expected, abs=1e-4)


def make_dpo_trainer(model_dir, loss_name="dpo", **overrides):
    config = TrainConfig(**{"lr": 1e-2, "micro_batch_size": 4, "warmup_ratio": 0.0,
                            "lr_schedule": "constant", **overrides})
    return Trainer(str(model_dir), config, loss_name=loss_name, beta=None, seed=0, pad_id=0,
                   iterations=3, pairs_per_iteration=4)


def test_dpo_trains_online_against_a_frozen_copy_of_the_initial_policy(tiny_model_dir):
    trainer = make_dpo_trainer(tiny_model_dir)
    initial = {name: tensor.clone() for name, tensor in trainer.reference.model.named_parameters()}
    pairs = make_pairs(4)
    first = trainer.train(pairs, gamma=0.5, iteration=1)
    # One step on 4 pairs: the policy still equals the reference, h = 0, −log σ(0) = log 2.
    assert first.steps == 1 and first.loss == pytest.approx(math.log(2), abs=1e-5)
    assert first.margins == pytest.approx([0.0] * 4, abs=1e-4)
    between = trainer.margins(pairs)
    second = trainer.train(pairs, gamma=0.5, iteration=2)
    # The policy moved away from the reference, which stayed as it was; DPO raised h, and
    # margins() reports the loss's own reference-adjusted h.
    assert second.loss < first.loss and sum(second.margins) > 0.01
    assert between == pytest.approx(second.margins, abs=1e-4)
    assert all(torch.equal(tensor, initial[name])
               for name, tensor in trainer.reference.model.named_parameters())
    assert not trainer.reference.training
    assert not any(p.requires_grad for p in trainer.reference.parameters())


@pytest.mark.parametrize("loss_name", ["repo", "ipo"])
def test_losses_without_a_required_reference_build_none(tiny_model_dir, loss_name):
    assert make_dpo_trainer(tiny_model_dir, loss_name=loss_name).reference is None


@pytest.mark.parametrize("stage, precision", [(3, "fp32"), (0, "bf16")])
def test_dpo_reference_under_zero3_and_bf16(tiny_model_dir, stage, precision):
    trainer = make_dpo_trainer(tiny_model_dir, zero_stage=stage, precision=precision)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    assert all(p.dtype == dtype for p in trainer.reference.parameters())
    first = trainer.train(make_pairs(4), gamma=0.5, iteration=1)
    assert first.loss == pytest.approx(math.log(2), abs=1e-2)
    assert math.isfinite(trainer.train(make_pairs(4), gamma=0.5, iteration=2).loss)


@pytest.mark.parametrize("count, world", [(7, 2), (3, 4), (8, 3), (0, 2)])
def test_interleave_undoes_each_ranks_every_nth_share(count, world):
    items = list(range(count))
    assert interleave([items[rank::world] for rank in range(world)]) == items


def test_several_ranks_need_their_rendezvous_from_whoever_starts_them(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.delenv("MASTER_PORT", raising=False)
    with pytest.raises(RuntimeError, match="WORLD_SIZE=2 needs MASTER_PORT"):
        init_process_group()


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_one_rank_state_dict_numpy_is_a_copy_of_its_weights(tiny_model_dir, precision):
    trainer = make_trainer(tiny_model_dir, precision=precision)
    assert (trainer.rank, trainer.ranks.world_size) == (0, 1)
    state = trainer.state_dict_numpy()
    expected = weights(trainer)
    assert state.keys() == expected.keys()
    for name, array in state.items():
        # bf16 has no NumPy dtype: upcast to fp32, which holds every bf16 value exactly.
        assert array.dtype == numpy.float32
        assert numpy.array_equal(array, expected[name].float().numpy())
    trainer.train(make_pairs(4), gamma=0.5, iteration=1)
    changed = weights(trainer)
    assert any(not numpy.array_equal(state[k], changed[k].float().numpy()) for k in state)


def test_gammapo_targets_are_the_trainers_and_are_saved_with_it(tiny_model_dir, tmp_path):
    """γ crosses in as a number; the per-pair targets around it are the trainer's own object,
    whose state (queue, generator) goes into the trainer's checkpoint and comes back on load."""
    from selfplay.control import GammaPOTargets

    def make(seed):
        return Trainer(str(tiny_model_dir), TrainConfig(lr=1e-3, micro_batch_size=4),
                       loss_name="simpo", beta=10.0, seed=0, pad_id=0, iterations=4,
                       pairs_per_iteration=8,
                       pair_targets=GammaPOTargets(beta=10.0, tau=10.0, seed=seed))

    trainer = make(seed=0)
    stats = trainer.train(make_pairs(8), gamma=0.5, iteration=1)
    # Per-pair targets around γ = 0.5, and every margin joined the queue (8 initial + 8).
    assert len(set(stats.gammas)) > 1 and len(trainer.pair_targets.queue) == 16
    trainer.save(str(tmp_path / "ckpt"))
    restored = make(seed=99)  # another seed: the state must come from the checkpoint
    restored.load(str(tmp_path / "ckpt"))
    assert restored.pair_targets.state_dict() == trainer.pair_targets.state_dict()
    assert (restored.train(make_pairs(8, seed=1), gamma=0.5, iteration=2).gammas
            == trainer.train(make_pairs(8, seed=1), gamma=0.5, iteration=2).gammas)


@pytest.mark.parametrize("flags, expected", [([], "fp32"), (["avx512_bf16"], "bf16")])
def test_the_trainer_resolves_auto_precision_where_it_runs(monkeypatch, tiny_model_dir, flags,
                                                           expected):
    from selfplay import runtime

    monkeypatch.setattr(runtime, "cpu_bf16_flags", lambda: flags)
    trainer = make_trainer(tiny_model_dir, precision="auto")
    assert trainer.precision == expected
    assert trainer.engine.bfloat16_enabled() == (expected == "bf16")
