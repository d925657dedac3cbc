"""A trainer leaves no files in /dev/shm (DeepSpeed's CPU all-reduce buffer is 69 MB each)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

SHM = Path("/dev/shm")
REPO = Path(__file__).resolve().parent.parent

# A fresh process: DeepSpeed's comm op creates its buffer once per process, so a trainer built
# in the test process after others would show nothing.
BUILD_AND_TRAIN = """
import sys
from selfplay.runtime import configure_environment
configure_environment()
from selfplay.recipe import TrainConfig
from selfplay.tiny_model import build_tiny_model
from selfplay.train.trainer import Trainer
from test_train import make_pairs

model_dir = build_tiny_model(sys.argv[1], seed=0)
config = TrainConfig(lr=1e-3, micro_batch_size=4, warmup_ratio=0.0, lr_schedule="constant")
trainer = Trainer(str(model_dir), config, loss_name="repo", beta=None, seed=0, pad_id=0,
                  iterations=1, pairs_per_iteration=4)
assert trainer.train(make_pairs(4), gamma=0.5, iteration=1).steps == 1
"""


@pytest.mark.skipif(not SHM.is_dir(), reason="no /dev/shm on this system")
@pytest.mark.parametrize("local_size", [None, "1"])
def test_building_a_trainer_and_training_leaves_nothing_in_dev_shm(tmp_path, local_size):
    env = {key: value for key, value in os.environ.items()
           if key not in ("LOCAL_SIZE", "MASTER_PORT", "WORLD_SIZE", "RANK", "LOCAL_RANK")}
    if local_size is not None:  # as a launcher (or an earlier version of this code) sets it
        env["LOCAL_SIZE"] = local_size
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "tests"), str(REPO)])
    # Compare sets: /dev/shm may hold other processes' files, including earlier runs' leftovers.
    before = set(os.listdir(SHM))
    result = subprocess.run([sys.executable, "-c", BUILD_AND_TRAIN, str(tmp_path / "model")],
                            capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    left = sorted(set(os.listdir(SHM)) - before)
    assert left == [], f"left in /dev/shm: {left}"
