import json

import pytest

from selfplay.data import DataError, PromptStream, format_prompt, load_prompt_table, to_prompt_rows


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


ROWS = [{"prompt": f"p{i}", "letters": "ab"} for i in range(10)]


def test_jsonl_parquet_and_saved_dataset_give_the_same_rows(tmp_path):
    import datasets

    jsonl = write_jsonl(tmp_path / "p.jsonl", ROWS)
    table = datasets.Dataset.from_list(ROWS)
    table.to_parquet(str(tmp_path / "p.parquet"))
    table.save_to_disk(str(tmp_path / "saved"))
    for source in (jsonl, tmp_path / "p.parquet", tmp_path / "saved"):
        assert load_prompt_table(str(source), "prompt")[:] == table[:]


def test_missing_file_and_missing_column_are_named(tmp_path):
    with pytest.raises(DataError, match="data.prompts: file not found"):
        load_prompt_table(str(tmp_path / "none.jsonl"), "prompt")
    path = write_jsonl(tmp_path / "p.jsonl", ROWS)
    with pytest.raises(DataError, match=r"column .question. not in .* \(columns: prompt, letters\)"):
        load_prompt_table(str(path), "question")


def test_stream_order_is_seeded_covers_each_epoch_and_resumes_from_cursor(tmp_path):
    table = load_prompt_table(str(write_jsonl(tmp_path / "p.jsonl", ROWS)), "prompt")
    stream = PromptStream(table, "prompt", seed=3)
    first = [r["prompt"] for r in stream.next_batch(4)]
    rest_of_epoch = [r["prompt"] for r in stream.next_batch(6)]
    assert sorted(first + rest_of_epoch) == sorted(r["prompt"] for r in ROWS)
    assert first != [f"p{i}" for i in range(4)]  # shuffled
    state = stream.state_dict()
    expected = [r["prompt"] for r in stream.next_batch(7)]  # crosses into epoch 2
    resumed = PromptStream(table, "prompt", seed=3)
    resumed.load_state_dict(state)
    assert [r["prompt"] for r in resumed.next_batch(7)] == expected
    other_seed = PromptStream(table, "prompt", seed=4)
    assert [r["prompt"] for r in other_seed.next_batch(4)] != first


def test_metadata_carries_the_other_columns(tmp_path, tiny_model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    [row] = to_prompt_rows([ROWS[0]], "prompt", tokenizer, use_chat_template=True)
    assert row.metadata == {"letters": "ab"} and row.text == "p0"  # tiny has no chat template


def test_chat_template_applied_when_the_tokenizer_has_one(tiny_model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    tokenizer.chat_template = "{% for m in messages %}<{{ m['content'] }}>{% endfor %}"
    assert format_prompt(tokenizer, "hi", use_chat_template=True) == "<hi>"
    assert format_prompt(tokenizer, "hi", use_chat_template=False) == "hi"
