"""Completion log-probs equal the model's own forward, including models that post-process their
logits (soft-capping, logit scaling); a model whose post-processing is unknown is refused."""
import pytest
import torch

from selfplay.train.logps import CompletionLogps, UnsupportedModelError, pad_batch

VOCAB = 64
SMALL = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
             num_attention_heads=2, num_key_value_heads=2, head_dim=32,
             max_position_embeddings=128, pad_token_id=0, bos_token_id=1, eos_token_id=2)


def llama():
    from transformers import LlamaConfig, LlamaForCausalLM
    return LlamaForCausalLM(LlamaConfig(**SMALL))


def gemma2_soft_capped():
    from transformers import Gemma2Config, Gemma2ForCausalLM
    # Logits of a few nats and a cap of 2, so that skipping the cap changes every log-prob.
    return Gemma2ForCausalLM(Gemma2Config(**SMALL, final_logit_softcapping=2.0,
                                          attn_logit_softcapping=50.0, initializer_range=0.5))


def cohere_scaled():
    from transformers import CohereConfig, CohereForCausalLM
    return CohereForCausalLM(CohereConfig(**SMALL, logit_scale=8.0))


def granite_scaled():
    from transformers import GraniteConfig, GraniteForCausalLM
    return GraniteForCausalLM(GraniteConfig(**SMALL, logits_scaling=0.125))


def batch_of_two():
    prompts = [[1, 5, 9, 13], [1, 7, 3]]
    completions = [[20, 21, 22, 23, 24], [30, 31, 32]]
    sequences = [p + c for p, c in zip(prompts, completions)]
    return pad_batch(sequences, [len(p) for p in prompts], pad_id=0), prompts, completions


def model_forward_logps(model, batch, prompts, completions, length_normalised=True):
    """Full-vocabulary log-softmax of the model's own logits, mean (or sum) over completion
    tokens."""
    logps = model(input_ids=batch["input_ids"],
                  attention_mask=batch["attention_mask"]).logits.float().log_softmax(-1)
    scores = []
    for row, (prompt, tokens) in enumerate(zip(prompts, completions)):
        token_logps = torch.stack([logps[row, len(prompt) - 1 + i, token]
                                   for i, token in enumerate(tokens)])
        scores.append(token_logps.mean() if length_normalised else token_logps.sum())
    return torch.stack(scores)


@pytest.mark.parametrize("length_normalised", [True, False])
@pytest.mark.parametrize("build", [llama, gemma2_soft_capped, cohere_scaled, granite_scaled])
def test_completion_logps_equal_the_models_own_forward(build, length_normalised):
    torch.manual_seed(0)
    model = build().eval()
    batch, prompts, completions = batch_of_two()
    ours = CompletionLogps(model, chunk_tokens=3, length_normalised=length_normalised)(**batch)
    ours.sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    expected = model_forward_logps(model, batch, prompts, completions, length_normalised)
    expected.sum().backward()
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-5)
    for name, param in model.named_parameters():
        if param.grad is not None:
            torch.testing.assert_close(grads[name], param.grad, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("build", [gemma2_soft_capped, cohere_scaled, granite_scaled])
def test_the_post_processing_matters_for_these_models(build):
    """Without their post-processing the log-probs would be wrong (the test above can fail)."""
    torch.manual_seed(0)
    model = build().eval()
    batch, prompts, completions = batch_of_two()
    scorer = CompletionLogps(model)
    scorer.transform = None
    with torch.no_grad():
        gap = (scorer(**batch) - model_forward_logps(model, batch, prompts, completions)).abs()
    assert gap.min() > 0.05


def test_a_model_with_unknown_logit_post_processing_is_refused():
    from transformers import LlamaForCausalLM

    class TemperedLlama(LlamaForCausalLM):
        def forward(self, *args, **kwargs):
            out = super().forward(*args, **kwargs)
            out.logits = out.logits * 3.0
            return out

    model = TemperedLlama(llama().config)
    with pytest.raises(UnsupportedModelError, match="TemperedLlama post-processes its logits"):
        CompletionLogps(model)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_plain_head_shortcut_matches_autograd_through_the_head(dtype):
    from selfplay.train.logps import _PlainHeadTokenLogps, _chunk_token_logps
    torch.manual_seed(0)
    hidden = torch.randn(7, 16, dtype=dtype, requires_grad=True)
    head = torch.nn.Linear(16, 50, bias=False).to(dtype)
    targets = torch.randint(0, 50, (7,))
    upstream = torch.randn(7)  # not all ones: the gradient's scale per position must carry
    ours = _PlainHeadTokenLogps.apply(hidden, head.weight, targets)
    (ours * upstream).sum().backward()
    grads = hidden.grad.clone(), head.weight.grad.clone()
    hidden.grad, head.weight.grad = None, None
    reference = _chunk_token_logps(hidden, targets, head, None)
    (reference * upstream).sum().backward()
    tolerance = dict(atol=1e-5, rtol=1e-5) if dtype == torch.float32 else dict(atol=2e-2,
                                                                                rtol=2e-2)
    torch.testing.assert_close(ours, reference, **tolerance)
    torch.testing.assert_close(grads[0], hidden.grad, **tolerance)
    torch.testing.assert_close(grads[1], head.weight.grad, **tolerance)


def test_a_tied_head_gets_both_gradients_through_the_shortcut():
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**SMALL, tie_word_embeddings=True)).eval()
    batch, prompts, completions = batch_of_two()
    CompletionLogps(model, chunk_tokens=3)(**batch).sum().backward()
    ours = model.get_input_embeddings().weight.grad.clone()
    model.zero_grad()
    model_forward_logps(model, batch, prompts, completions).sum().backward()
    torch.testing.assert_close(ours, model.get_input_embeddings().weight.grad, atol=1e-5,
                               rtol=1e-4)
