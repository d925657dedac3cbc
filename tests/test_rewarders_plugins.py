"""Rewarders that installed packages register in the `selfplay.rewarders` entry-point group."""
import importlib

import pytest
from click.testing import CliRunner

from rewarders.base import RewardError, available_rewarders, load_rewarder, rewarder_class
from rewarders.letters import LettersRewarder

ENTRY_POINTS = """\
[selfplay.rewarders]
fake_length = fake_rewards:FakeLength
letters = fake_rewards:FakeLength
broken = fake_rewards:Missing
crashing = crashing_rewards:Scorer
"""

MODULE = '''\
class FakeLength:
    """Completion length in characters, from an installed plug-in."""

    def __init__(self, scale=1.0):
        self.scale = scale

    def score(self, prompts, completions, metadata):
        return [self.scale * len(c) for c in completions]
'''


@pytest.fixture
def fake_distribution(tmp_path, monkeypatch):
    """An installed `fake-pkg` distribution, as pip would leave it, on sys.path."""
    dist_info = tmp_path / "fake_pkg-0.1.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: fake-pkg\nVersion: 0.1\n")
    (dist_info / "entry_points.txt").write_text(ENTRY_POINTS)
    (tmp_path / "fake_rewards.py").write_text(MODULE)
    (tmp_path / "crashing_rewards.py").write_text("raise RuntimeError('no API key set')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    yield
    importlib.invalidate_caches()


def test_plugin_is_listed_with_its_distribution(fake_distribution):
    available = available_rewarders()
    assert available["fake_length"] == ("fake_rewards:FakeLength", "plug-in: fake-pkg")
    assert available["letters"] == ("rewarders.letters:LettersRewarder", "built-in")
    assert available["judge"][1] == "built-in"


def test_plugin_loads_by_short_name_and_builtins_win(fake_distribution):
    rewarder = load_rewarder("fake_length", {"scale": 2.0})
    assert rewarder.score(["p"], ["abc"], [{}]) == [6.0]
    assert rewarder_class("letters") is LettersRewarder
    with pytest.raises(RewardError, match="cannot import 'fake_rewards:Missing'"):
        load_rewarder("broken")


def test_plugin_module_that_fails_to_import_is_one_error(fake_distribution):
    with pytest.raises(RewardError, match="cannot import 'crashing_rewards:Scorer': importing "
                                          "'crashing_rewards' raised RuntimeError: no API key set"):
        rewarder_class("crashing")


def test_unknown_name_lists_builtins_and_plugins(fake_distribution):
    with pytest.raises(RewardError) as caught:
        load_rewarder("nope")
    message = str(caught.value)
    assert "unknown rewarder 'nope'; built-ins: combine, http," in message
    assert "installed plug-ins: broken, crashing, fake_length;" in message
    assert "package.module:ClassName" in message


def test_unknown_name_without_plugins_says_none():
    with pytest.raises(RewardError, match="installed plug-ins: none;"):
        load_rewarder("nope")


def test_cli_lists_source_and_description(fake_distribution):
    from selfplay.cli import main

    result = CliRunner().invoke(main, ["rewarders"])
    assert result.exit_code == 0, result.output
    lines = {line.split()[0]: line for line in result.output.splitlines()}
    assert "plug-in: fake-pkg" in lines["fake_length"]
    assert "Completion length in characters" in lines["fake_length"]
    assert "built-in" in lines["letters"] and "Share of a completion" in lines["letters"]
    assert "cannot load" in lines["broken"]
