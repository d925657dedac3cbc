"""`import selfplay` stays light: the orchestrator and the recipe load no heavy machinery."""
import subprocess
import sys

from conftest import REPO


def test_importing_the_loop_and_recipe_loads_neither_vllm_deepspeed_nor_ray():
    code = ("import sys, selfplay, selfplay.loop, selfplay.recipe, selfplay.control, selfplay.api, "
            "selfplay.types; print(sorted(m for m in ('vllm', 'deepspeed', 'ray') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]"


def test_messages_are_plain_picklable_data():
    import pickle

    from selfplay.types import Completion, Pair, Rollout, SamplingConfig

    pair = Pair(0, [1, 2], Completion("a", [3]), Completion("b", [4, 5]), 1.0, 0.0)
    messages = [pair, Rollout([1, 2], [pair.chosen, pair.rejected]), SamplingConfig(2, 8)]
    assert pickle.loads(pickle.dumps(messages)) == messages
