from selfplay.pairs import Completion, best_worst_pairs


def completions(*texts):
    return [Completion(t, [i]) for i, t in enumerate(texts)]


def test_best_against_worst_and_ties_dropped():
    pairs, stats = best_worst_pairs(
        [[1], [2], [3]],
        [completions("a", "b", "c"), completions("d", "e", "f"), completions("g", "h", "i")],
        [[0.1, 0.9, 0.5], [0.3, 0.3, 0.3], [0.2, 0.25, 0.0]], min_reward_gap=0.0)
    assert [(p.prompt_index, p.chosen.text, p.rejected.text) for p in pairs] == [
        (0, "b", "a"), (2, "h", "i")]
    assert (stats.n_prompts, stats.n_pairs, stats.n_dropped) == (3, 2, 1)


def test_min_reward_gap_drops_close_calls():
    pairs, stats = best_worst_pairs([[1], [2]], [completions("a", "b"), completions("c", "d")],
                                    [[0.0, 0.2], [0.0, 0.9]], min_reward_gap=0.5)
    assert [p.prompt_index for p in pairs] == [1] and stats.n_dropped == 1


def test_first_of_equal_best_is_chosen_so_runs_repeat():
    pairs, _ = best_worst_pairs([[1]], [completions("a", "b", "c")], [[1.0, 1.0, 0.0]])
    assert pairs[0].chosen.text == "a"


def test_all_levels_pairs_every_two_distinct_reward_levels():
    from selfplay.pairs import level_pairs

    pairs, stats = level_pairs(
        [[1], [2], [3]],
        [completions("a", "b", "c", "d"), completions("e", "f"), completions("g", "h", "i")],
        [[0.5, 1.0, 0.0, 1.0], [0.3, 0.3], [0.2, 0.25, 0.0]], min_reward_gap=0.1)
    # Prompt 0: levels 1.0 (b, first), 0.5 (a), 0.0 (c): three pairs, highest levels first.
    # Prompt 1 ties; prompt 2: 0.25 vs 0.2 is within the gap, the other two pairs are not.
    assert [(p.prompt_index, p.chosen.text, p.rejected.text) for p in pairs] == [
        (0, "b", "a"), (0, "b", "c"), (0, "a", "c"), (2, "h", "i"), (2, "g", "i")]
    assert [(p.chosen_reward, p.rejected_reward) for p in pairs[:3]] == [
        (1.0, 0.5), (1.0, 0.0), (0.5, 0.0)]
    assert (stats.n_prompts, stats.n_pairs, stats.n_dropped) == (3, 5, 1)


def test_the_strategies_share_one_entry_point():
    from selfplay.pairs import self_play_pairs

    args = ([[1]], [completions("a", "b", "c")], [[0.0, 0.5, 1.0]])
    assert len(self_play_pairs("best_worst", *args)[0]) == 1
    assert len(self_play_pairs("all_levels", *args)[0]) == 3


def test_offline_answers_cut_at_the_length_limit_get_no_eos():
    from types import SimpleNamespace

    from selfplay.pairs import ended, offline_pairs
    from selfplay.tiny_model import build_tokenizer

    tokenizer = build_tokenizer()
    eos = tokenizer.eos_token_id
    assert ended(Completion("ab", [5, 6, eos]), tokenizer)
    assert not ended(Completion("ab", [5, 6]), tokenizer)
    assert not ended(Completion("", []), tokenizer)
    data = SimpleNamespace(prompt_field="prompt", chosen_field="chosen", rejected_field="rejected",
                           chat_template=False)
    rows = [{"prompt": "p", "chosen": "ab", "rejected": "cd", "rejected_ended": False},
            {"prompt": "p", "chosen": "ab", "rejected": "cd", "chosen_ended": True}]
    pairs, _ = offline_pairs(rows, tokenizer, data)
    # A user's dataset without the columns: every answer ended, as before.
    assert [(p.chosen.token_ids[-1] == eos, p.rejected.token_ids[-1] == eos) for p in pairs] == [
        (True, False), (True, True)]
