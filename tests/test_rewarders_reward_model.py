"""`reward_model`: a tiny random sequence-classification Llama built from a config."""
import pytest
import torch

from rewarders.base import RewardError, load_rewarder
from selfplay.tiny_model import VOCAB_SIZE, build_tokenizer

CHAT_TEMPLATE = ("{% for m in messages %}{{ bos_token }}{{ m['role'] }}: {{ m['content'] }}"
                 "{{ eos_token }}{% endfor %}")


def build_reward_model(out_dir, num_labels=1, chat_template=None):
    from transformers import LlamaConfig, LlamaForSequenceClassification

    config = LlamaConfig(
        vocab_size=VOCAB_SIZE, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=2, head_dim=32, max_position_embeddings=128,
        pad_token_id=0, bos_token_id=1, eos_token_id=2, num_labels=num_labels)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        LlamaForSequenceClassification(config).save_pretrained(out_dir)
    tokenizer = build_tokenizer()
    tokenizer.chat_template = chat_template
    tokenizer.save_pretrained(out_dir)
    return str(out_dir)


@pytest.fixture(scope="module")
def reward_model_dir(tmp_path_factory):
    return build_reward_model(tmp_path_factory.mktemp("rm") / "model")


PROMPTS = ["what is 2+2?", "say hi", "count: 1 2 3", "a", "list five letters"]
COMPLETIONS = ["4", "hi there, how are you?", "4 5 6 7", "b", "a b c d e"]


def test_batching_and_order_do_not_change_scores(reward_model_dir):
    one_by_one = load_rewarder("reward_model", {"path": reward_model_dir, "batch_size": 1})
    batched = load_rewarder("reward_model", {"path": reward_model_dir, "batch_size": 2})
    expected = one_by_one.score(PROMPTS, COMPLETIONS, [{}] * 5)
    assert len(set(expected)) == 5  # distinct, so a mix-up would show
    assert batched.score(PROMPTS, COMPLETIONS, [{}] * 5) == pytest.approx(expected, abs=1e-5)
    reversed_scores = batched.score(PROMPTS[::-1], COMPLETIONS[::-1], [{}] * 5)
    assert reversed_scores == pytest.approx(expected[::-1], abs=1e-5)


def test_long_inputs_keep_the_completions_end(reward_model_dir):
    # Two prompts that differ only in a start which truncation cuts off.
    rewarder = load_rewarder("reward_model", {"path": reward_model_dir, "max_length": 32})
    long_a, long_b = "a" * 600 + "x" * 40 + " tail", "b" * 600 + "x" * 40 + " tail"
    ids = rewarder.encode(long_a, " done")
    assert len(ids) == 32 and ids[0] == rewarder.tokenizer.bos_token_id
    assert rewarder.tokenizer.decode(ids[1:]).endswith("xxx tail done")
    scores = rewarder.score([long_a, long_b], [" done", " done"], [{}, {}])
    assert scores[0] == pytest.approx(scores[1], abs=1e-6)  # the differing start was cut
    with torch.no_grad():
        direct = rewarder.model(torch.tensor([ids])).logits[0, 0].item()
    assert scores[0] == pytest.approx(direct, abs=1e-5)


def test_several_labels_use_the_last_unless_told(tmp_path):
    path = build_reward_model(tmp_path / "rm3", num_labels=3)
    default = load_rewarder("reward_model", {"path": path})
    first = load_rewarder("reward_model", {"path": path, "label": 0})
    with torch.no_grad():
        logits = default.model(torch.tensor([default.encode("say hi", "hi")])).logits[0]
    assert default.score(["say hi"], ["hi"], [{}]) == pytest.approx([logits[2].item()])
    assert first.score(["say hi"], ["hi"], [{}]) == pytest.approx([logits[0].item()])
    with pytest.raises(RewardError, match="label: 5 is out of range for 3 labels"):
        load_rewarder("reward_model", {"path": path, "label": 5})


def test_chat_template_formats_user_and_assistant_turns(tmp_path):
    path = build_reward_model(tmp_path / "chat", chat_template=CHAT_TEMPLATE)
    templated = load_rewarder("reward_model", {"path": path})
    plain = load_rewarder("reward_model", {"path": path, "chat_template": False})
    tokenizer = templated.tokenizer
    expected = "<s>user: say hi</s><s>assistant: hi</s>"
    assert templated.encode("say hi", "hi") == tokenizer(expected, add_special_tokens=False)[
        "input_ids"]
    assert plain.encode("say hi", " hi") == tokenizer("say hi hi")["input_ids"]


def test_missing_path_and_causal_lm_are_refused(tmp_path, tiny_model_dir):
    with pytest.raises(RewardError, match="path: no model directory"):
        load_rewarder("reward_model", {"path": str(tmp_path / "nowhere")})
    with pytest.raises(RewardError, match=r"holds \['LlamaForCausalLM'\], not a "
                                          "sequence-classification reward model"):
        load_rewarder("reward_model", {"path": str(tiny_model_dir)})
