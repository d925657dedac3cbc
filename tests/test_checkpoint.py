import errno
import json

import pytest

from selfplay import checkpoint


def write_file(content):
    def write(directory):
        (directory / "weights.bin").write_bytes(content)
    return write


def test_save_then_latest_returns_newest_and_prunes(tmp_path):
    for iteration in range(1, 5):
        checkpoint.save(tmp_path, iteration, write_file(b"x" * iteration), {"iteration": iteration},
                        keep=2)
    assert sorted(p.name for p in tmp_path.glob("iter-*")) == ["iter-0003", "iter-0004"]
    assert checkpoint.latest(tmp_path).name == "iter-0004"
    assert (tmp_path / "latest").read_text().strip() == "iter-0004"
    assert checkpoint.load_state(tmp_path / "iter-0004") == {"iteration": 4}


def test_truncated_checkpoint_is_skipped_with_a_warning(tmp_path):
    checkpoint.save(tmp_path, 1, write_file(b"one"), {"iteration": 1}, keep=5)
    checkpoint.save(tmp_path, 2, write_file(b"two"), {"iteration": 2}, keep=5)
    (tmp_path / "iter-0002" / "weights.bin").write_bytes(b"t")  # cut short
    with pytest.warns(UserWarning, match="iter-0002 is incomplete"):
        assert checkpoint.latest(tmp_path).name == "iter-0001"


def test_directory_without_manifest_is_not_complete(tmp_path):
    (tmp_path / "iter-0003").mkdir()
    (tmp_path / "iter-0003" / "state.json").write_text(json.dumps({"iteration": 3}))
    with pytest.warns(UserWarning):
        assert checkpoint.latest(tmp_path) is None


def test_disk_full_keeps_previous_checkpoint_usable(tmp_path):
    checkpoint.save(tmp_path, 1, write_file(b"one"), {"iteration": 1}, keep=2)

    def fills_the_disk(directory):
        (directory / "weights.bin").write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(checkpoint.CheckpointError,
                       match="disk full.*previous checkpoint iter-0001 is intact"):
        checkpoint.save(tmp_path, 2, fills_the_disk, {"iteration": 2}, keep=2)
    assert checkpoint.latest(tmp_path).name == "iter-0001"
    assert not list(tmp_path.glob(".tmp-*"))
    assert (tmp_path / "latest").read_text().strip() == "iter-0001"
