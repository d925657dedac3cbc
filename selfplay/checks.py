"""What `selfplay validate` checks beyond the recipe's own fields, without loading a model.

Each check runs the code the run itself uses (the prompt loader, the model path resolution, the
rewarder lookup) short of its expensive part, so `validate` and `run` cannot disagree.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from selfplay.errors import UserError

if TYPE_CHECKING:
    from selfplay.recipe import Recipe


def check_inputs(recipe: Recipe) -> list[str]:
    """One line per problem with the recipe's files, model and rewarder; empty when all is well.

    Reads the prompt files and imports the rewarder's module; builds, loads and constructs
    nothing.
    """
    from selfplay.models import model_path_problem

    problems = []
    data = recipe.data
    problems += _prompt_file_problems(data.prompts, data.prompt_field, "data.prompts",
                                      recipe.offline_columns())
    if recipe.eval.prompts:
        problems += _prompt_file_problems(recipe.eval.prompts, data.prompt_field,
                                          "eval.prompts", {})
    problem = model_path_problem(recipe.model.path)
    if problem:
        problems.append(problem)
    if recipe.reward is not None:
        problems += _first_error(lambda: _rewarder_class(recipe.reward.name))
    return problems


def _prompt_file_problems(path: str, prompt_field: str, field: str,
                          columns: dict[str, str]) -> list[str]:
    from selfplay.data import load_prompt_table

    return _first_error(lambda: load_prompt_table(path, prompt_field, field=field,
                                                  columns=columns))


def _rewarder_class(name: str) -> type:
    from rewarders.base import rewarder_class

    return rewarder_class(name)


def _first_error(check) -> list[str]:
    try:
        check()
    except UserError as error:
        return [error.one_line()]
    return []
