"""`builtin:tiny`: a tiny random-initialised character-level Llama, built from a config.

Used by tests and `recipes/tiny.yaml`, so that nothing is downloaded. The head size is 32
because vLLM's CPU attention only accepts some head sizes (32, 64, 80, …).
"""
from __future__ import annotations

import string
from pathlib import Path

SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<unk>"]
CHARACTERS = list(string.ascii_lowercase + string.digits + " :.,?!-=")
VOCAB_SIZE = 64  # the characters and specials, padded to a round size


def build_tokenizer():
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    tokens = SPECIAL_TOKENS + CHARACTERS
    tokens += [f"<extra_{i}>" for i in range(VOCAB_SIZE - len(tokens))]
    vocab = {token: index for index, token in enumerate(tokens)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    core.decoder = decoders.Fuse()
    core.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", vocab["<s>"])])
    return PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>", unk_token="<unk>")


def build_tiny_model(out_dir: str | Path, seed: int = 0) -> Path:
    """Writes a Hugging Face model directory (weights + tokenizer) that vLLM loads as is."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    out_dir = Path(out_dir)
    config = LlamaConfig(
        vocab_size=VOCAB_SIZE, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, head_dim=32, max_position_embeddings=512,
        tie_word_embeddings=False, pad_token_id=0, bos_token_id=1, eos_token_id=2,
        torch_dtype="float32")
    fork = torch.random.fork_rng()  # building a model must not disturb the caller's RNG
    with fork:
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = 0
    model.save_pretrained(out_dir, safe_serialization=True)
    build_tokenizer().save_pretrained(out_dir)
    return out_dir
