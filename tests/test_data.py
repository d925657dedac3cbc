import json

import pytest

from selfplay.data import (DataError, PromptStream, check_prompt_lengths, format_prompt,
                           load_prompt_table, to_prompt_rows)


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


@pytest.mark.parametrize("content, message", [
    (b'{"prompt": "a"}\n\n{"prompt": "b"\n', r"data.prompts: line 3 of .*p.jsonl is not valid JSON"),
    (b'{"prompt": "a"}\n["b"]\n', r"line 2 of .*p.jsonl is not a JSON object"),
    (b"", r"data.prompts: .*p.jsonl is empty"),
    (b"  \n\n", r"data.prompts: .*p.jsonl is empty"),
    (b'{"prompt": "a"}\n{"prompt": "caf\xe9"}\n', r"p.jsonl is not UTF-8 text \(line 2, byte 31\)"),
    (b'{"prompt": "a"}\n{"prompt": 7}\n', r"line 2 of .*p.jsonl: 'prompt' is 7, not a non-empty"),
    (b'{"prompt": "a"}\n{"prompt": ""}\n', r"line 2 of .*p.jsonl: 'prompt' is '', not a non-empty"),
])
def test_bad_jsonl_is_refused_naming_the_line(tmp_path, content, message):
    path = tmp_path / "p.jsonl"
    path.write_bytes(content)
    with pytest.raises(DataError, match=message):
        load_prompt_table(str(path), "prompt")


def test_rows_are_checked_in_any_format_and_the_field_is_named(tmp_path):
    import datasets

    datasets.Dataset.from_list([{"prompt": "a"}, {"prompt": None}]).to_parquet(
        str(tmp_path / "p.parquet"))
    with pytest.raises(DataError, match=r"eval.prompts: row 2 of .*p.parquet: 'prompt' is None"):
        load_prompt_table(str(tmp_path / "p.parquet"), "prompt", field="eval.prompts")
    datasets.Dataset.from_list([{"prompt": 1}, {"prompt": 2}]).to_parquet(
        str(tmp_path / "n.parquet"))
    with pytest.raises(DataError, match=r"row 1 of .*n.parquet: 'prompt' is 1"):
        load_prompt_table(str(tmp_path / "n.parquet"), "prompt")
    (tmp_path / "p.txt").write_text("hi")
    with pytest.raises(DataError, match=r"eval.prompts: unsupported file type '.txt'"):
        load_prompt_table(str(tmp_path / "p.txt"), "prompt", field="eval.prompts")


def test_a_json_document_is_read_whole(tmp_path):
    path = tmp_path / "p.json"
    path.write_text(json.dumps(ROWS))
    assert load_prompt_table(str(path), "prompt")["prompt"] == [r["prompt"] for r in ROWS]


def test_other_required_columns_are_named_by_their_recipe_field(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", ROWS)
    with pytest.raises(DataError, match=r"data.chosen_field: column 'chosen' not in .*"
                                        r"\(columns: prompt, letters\)"):
        load_prompt_table(str(path), "prompt", columns={"data.chosen_field": "chosen"})
    assert len(load_prompt_table(str(path), "prompt", columns={"x": "letters"})) == 10


def test_prompt_lengths_that_fit_pass_and_the_first_that_does_not_is_named():
    check_prompt_lengths([10, 112, 5], max_model_len=128, max_new_tokens=16, source="p.jsonl")
    with pytest.raises(DataError) as caught:
        check_prompt_lengths([10, 113, 5, 200], max_model_len=128, max_new_tokens=16,
                             source="p.jsonl")
    message = str(caught.value)
    assert message.startswith("p.jsonl: row 2 is 113 tokens;")
    assert "(2 rows do not fit)" in message
    assert "raise rollout.max_model_len to at least 129" in message


def test_letter_group_splits_are_disjoint_and_balanced():
    import importlib.util
    from collections import Counter
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "recipes" / "data" / "make_letter_groups.py"
    spec = importlib.util.spec_from_file_location("make_letter_groups", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    splits = module.make_splits()
    prompts = {name: {r["prompt"] for r in rows} for name, rows in splits.items()}
    assert not prompts["train"] & prompts["tune"] and not prompts["train"] & prompts["heldout"]
    assert not prompts["tune"] & prompts["heldout"]
    for name, rows in splits.items():
        assert len(set(Counter(r["group"] for r in rows).values())) == 1, name  # balanced
        shipped = (path.parent / f"groups-{name}.jsonl").read_text().splitlines()
        assert [json.loads(line) for line in shipped] == rows, name  # the files are reproducible
