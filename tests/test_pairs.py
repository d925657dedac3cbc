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
