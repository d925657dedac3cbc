"""Rollout engines: seeded sampling, and in-memory weight sync that the engine really uses."""
import json
import subprocess
import sys

import pytest
import torch

from selfplay.rollout import build_engine
from selfplay.runtime import cpu_bf16_flags
from selfplay.types import SamplingConfig
from selfplay.train.trainer import Trainer
from selfplay.recipe import TrainConfig
from test_train import make_pairs

from conftest import REPO

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
                      pad_id=0, iterations=10, pairs_per_iteration=4)
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


def build_tied_model(out_dir):
    """A tiny Llama whose output layer is its input embedding, as SmolLM2's is."""
    from transformers import LlamaConfig, LlamaForCausalLM
    from selfplay.tiny_model import VOCAB_SIZE, build_tokenizer

    config = LlamaConfig(
        vocab_size=VOCAB_SIZE, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=2, head_dim=32, max_position_embeddings=256,
        tie_word_embeddings=True, pad_token_id=0, bos_token_id=1, eos_token_id=2,
        torch_dtype="float32")
    with torch.random.fork_rng():
        torch.manual_seed(0)
        LlamaForCausalLM(config).save_pretrained(out_dir, safe_serialization=True)
    build_tokenizer().save_pretrained(out_dir)
    return out_dir


@pytest.fixture(scope="module")
def tied_model_dir(tmp_path_factory):
    return build_tied_model(tmp_path_factory.mktemp("tied") / "model")


def tied_sync_logprobs(kind: str, model_dir: str, dtype: str = "float32") -> dict:
    """An engine on the tied model takes a perturbed embedding (fp32, as the trainer holds it);
    its log-probs of a fixed sequence before and after the sync, and a Hugging Face forward of
    the new weights in fp32."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    engine = build_engine(kind, model_dir, dtype=dtype, seed=0, max_model_len=128,
                          kv_cache_gb=0.25)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    prompt_ids = tokenizer("echo a b c:")["input_ids"]
    completion_ids = tokenizer(" a b c", add_special_tokens=False)["input_ids"]
    reference = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    with torch.no_grad(), torch.random.fork_rng():
        torch.manual_seed(1)
        embedding = reference.get_input_embeddings().weight
        embedding.add_(0.05 * torch.randn_like(embedding))  # the output layer moves with it
        logps = reference(torch.tensor([prompt_ids + completion_ids])).logits[0].log_softmax(-1)
    start = len(prompt_ids)
    expected = [logps[start - 1 + i, token].item() for i, token in enumerate(completion_ids)]
    before = engine.sequence_logprobs(prompt_ids, completion_ids)
    engine.update_weights(reference.named_parameters())  # tied: no lm_head.weight among them
    after = engine.sequence_logprobs(prompt_ids, completion_ids)
    kv_cache_bytes = (engine.llm.llm_engine.vllm_config.cache_config.kv_cache_memory_bytes
                      if kind == "vllm" else None)
    return {"before": before, "after": after, "expected": expected,
            "kv_cache_bytes": kv_cache_bytes}


# bf16 weights and activations: log-probs off fp32's by up to 4e-3 here (measured); a stale
# output layer misses by 0.68.
BF16_LOGPROB_TOLERANCE = 2e-2


@pytest.mark.parametrize("kind, dtype", [
    ("vllm", "float32"), ("hf", "float32"),
    pytest.param("vllm", "bfloat16", marks=pytest.mark.skipif(
        not cpu_bf16_flags(), reason="bf16 sampling needs AVX512-BF16 or AMX (model.dtype: auto "
        "picks fp32 here)")),
])
def test_after_sync_a_tied_output_layer_uses_the_new_embedding(kind, dtype, tied_model_dir):
    # In a fresh process: a second vLLM engine in this one replaces the process group that the
    # module's engine and DeepSpeed share, which would break the trainers of later tests.
    code = ("import json, sys; sys.path.insert(0, 'tests'); import conftest; "
            "from test_rollout import tied_sync_logprobs; "
            f"print(json.dumps(tied_sync_logprobs({kind!r}, {str(tied_model_dir)!r}, "
            f"{dtype!r})))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    # fp32 weights reach a bf16 engine cast on load, its packed output layer included.
    tolerance = LOGPROB_TOLERANCE if dtype == "float32" else BF16_LOGPROB_TOLERANCE
    assert result["after"] == pytest.approx(result["expected"], abs=tolerance)
    assert max(abs(b - e) for b, e in zip(result["before"], result["expected"])) > (
        100 * LOGPROB_TOLERANCE)
    if kind == "vllm":  # a fraction of a GiB reaches vLLM (its env var takes whole GiB only)
        assert result["kv_cache_bytes"] == 2**28


def test_vllm_gets_a_fixed_kv_cache_on_cpu_and_a_memory_share_and_shards_on_gpu():
    from selfplay.rollout.vllm_engine import llm_args
    common = dict(dtype="bfloat16", seed=1, max_model_len=512, kv_cache_gb=0.25,
                  gpu_memory_utilization=0.3, tensor_parallel_size=2)
    cpu = llm_args("m", cuda=False, **common)
    assert cpu["kv_cache_memory_bytes"] == 2**28 and cpu["distributed_executor_backend"] == "uni"
    assert cpu["enforce_eager"] and "gpu_memory_utilization" not in cpu
    assert "tensor_parallel_size" not in cpu
    gpu = llm_args("m", cuda=True, **common)
    assert "kv_cache_memory_bytes" not in gpu and "enforce_eager" not in gpu  # CUDA graphs
    assert gpu["gpu_memory_utilization"] == 0.3 and gpu["tensor_parallel_size"] == 2
    assert gpu["distributed_executor_backend"] == "mp"
    assert llm_args("m", cuda=True, **{**common, "tensor_parallel_size": 1})[
        "distributed_executor_backend"] == "uni"
