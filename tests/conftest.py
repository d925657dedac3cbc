import os
import subprocess
import sys
from pathlib import Path

from selfplay.runtime import configure_environment, configure_logging

configure_environment()  # before torch or vLLM load, as the CLI does
configure_logging(verbose=False)

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
TINY_RECIPE = REPO / "recipes" / "tiny.yaml"


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    from selfplay.tiny_model import build_tiny_model
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model", seed=0)


def run_cli(*args, timeout=600, env=None, cwd=None) -> subprocess.CompletedProcess:
    """Runs `python -m selfplay.cli ARGS` in a fresh process, as a user would."""
    full_env = {**os.environ, **(env or {})}
    full_env["PYTHONPATH"] = os.pathsep.join([str(REPO / "tests" / "plugins"), str(REPO)])
    return subprocess.run([sys.executable, "-m", "selfplay.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, env=full_env,
                          cwd=cwd or REPO)
