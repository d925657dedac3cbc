"""vLLM rollout engine, in-process. The only module that imports vLLM.

On CPU the engine lives in the trainer's process (`VLLM_ENABLE_V1_MULTIPROCESSING=0`) and takes
new weights through `collective_rpc("reload_weights")`, the same call a multi-process engine
serves, so the interface carries over to engines in other processes.
"""
from __future__ import annotations

import random
from typing import Iterable

import numpy as np
import torch

from selfplay.rollout.base import RolloutEngine
from selfplay.runtime import is_verbose, vllm_cpu_environment
from selfplay.types import Completion, Rollout, SamplingConfig


def repack_cpu_lm_head(model: torch.nn.Module) -> None:
    """Rebuilds the LM head's CPU GEMM from its current weight (runs inside the worker).

    On CPU, vLLM computes logits with a oneDNN-packed copy of the head's weight made at load;
    a reload refreshes the parameter, not that copy, and a head tied to the input embedding is
    not reloaded at all: without this, sampling after a sync uses the original output layer."""
    head = getattr(model, "lm_head", None)
    if head is None or not hasattr(head, "cpu_linear"):
        return  # not vLLM's CPU GEMM path (e.g. a GPU): the head reads its parameter directly
    from vllm.model_executor.layers.utils import dispatch_cpu_unquantized_gemm

    dispatch_cpu_unquantized_gemm(head, remove_weight=False)


def llm_args(model_dir: str, *, dtype: str, seed: int, max_model_len: int, kv_cache_gb: float,
             gpu_memory_utilization: float, tensor_parallel_size: int, cuda: bool,
             weight_transfer: bool = False) -> dict:
    """The arguments of vLLM's `LLM` for this machine. CPU: the KV cache has a fixed size and the
    engine stays in this process, eager. GPU: vLLM sizes the KV cache from its share of the
    GPU's memory, captures CUDA graphs, and runs tensor-parallel shards in worker processes;
    `weight_transfer`: the engine receives weights from a trainer in another process through
    vLLM's NCCL weight-transfer engine (selfplay.distributed.vllm_transfer)."""
    args = dict(model=model_dir, dtype=dtype, seed=seed, max_model_len=max_model_len,
                enable_prefix_caching=False, use_tqdm_on_load=is_verbose())
    if not cuda:
        return {**args, "enforce_eager": True, "distributed_executor_backend": "uni",
                "kv_cache_memory_bytes": int(kv_cache_gb * 2**30)}
    return {**args, "gpu_memory_utilization": gpu_memory_utilization,
            "tensor_parallel_size": tensor_parallel_size,
            "distributed_executor_backend": "uni" if tensor_parallel_size == 1 else "mp",
            **({"weight_transfer_config": {"backend": "nccl"}} if weight_transfer else {})}


class VLLMEngine(RolloutEngine):
    def __init__(self, model_dir: str, *, dtype: str, seed: int, max_model_len: int,
                 kv_cache_gb: float = 1.0, gpu_memory_utilization: float = 0.9,
                 tensor_parallel_size: int = 1, weight_transfer: bool = False):
        vllm_cpu_environment()
        from vllm import LLM

        # Starting the engine re-seeds the global RNGs and disables torch.set_num_threads for
        # the whole process; the trainer shares this process, so both are put back.
        saved_rng = (random.getstate(), np.random.get_state(), torch.get_rng_state())
        set_num_threads, threads = torch.set_num_threads, torch.get_num_threads()
        self.llm = LLM(**llm_args(model_dir, dtype=dtype, seed=seed, max_model_len=max_model_len,
                                  kv_cache_gb=kv_cache_gb,
                                  gpu_memory_utilization=gpu_memory_utilization,
                                  tensor_parallel_size=tensor_parallel_size,
                                  cuda=torch.cuda.is_available(),
                                  weight_transfer=weight_transfer))
        torch.set_num_threads = set_num_threads
        torch.set_num_threads(threads)
        random.setstate(saved_rng[0])
        np.random.set_state(saved_rng[1])
        torch.set_rng_state(saved_rng[2])
        self.tokenizer = self.llm.get_tokenizer()
        self.max_model_len = max_model_len
        config = self.llm.llm_engine.vllm_config
        # What a trainer sending weights over vLLM's transfer engine needs to know.
        self.dtype = str(config.model_config.dtype).removeprefix("torch.")
        self.world_size = config.parallel_config.world_size

    def generate(self, prompts: list[str], sampling: SamplingConfig, seed: int,
                 progress: bool = False) -> list[Rollout]:
        from vllm import SamplingParams

        params = SamplingParams(n=sampling.n, max_tokens=sampling.max_new_tokens,
                                temperature=sampling.temperature, top_p=sampling.top_p)
        # Per-request seeds crash vLLM on CPU; requests without one draw from torch's global
        # generator, so seeding it here makes a call a function of (weights, prompts, seed).
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            outputs = self.llm.generate(prompts, params, use_tqdm=progress)
        return [Rollout(prompt_ids=list(out.prompt_token_ids),
                        completions=[Completion(c.text, list(c.token_ids)) for c in out.outputs])
                for out in outputs]

    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        self.llm.collective_rpc("reload_weights",
                                kwargs={"weights_iterator": iter(list(named_tensors))})
        self.llm.apply_model(repack_cpu_lm_head)
        self.llm.reset_prefix_cache()

    def sequence_logprobs(self, prompt_ids: list[int], completion_ids: list[int]) -> list[float]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        params = SamplingParams(max_tokens=1, prompt_logprobs=0, temperature=1.0)
        out = self.llm.generate([TokensPrompt(prompt_token_ids=prompt_ids + completion_ids)],
                                params, use_tqdm=False)[0]
        scored = out.prompt_logprobs[len(prompt_ids):]
        return [entry[token].logprob for entry, token in zip(scored, completion_ids)]

    def close(self) -> None:
        del self.llm
