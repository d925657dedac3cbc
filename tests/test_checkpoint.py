import errno
import json
import shutil

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


def little_free_space(monkeypatch, free=12 << 20):
    usage = shutil.disk_usage("/")
    monkeypatch.setattr(shutil, "disk_usage",
                        lambda path: usage._replace(free=free, used=usage.total - free))


def fills_the_disk_with(error):
    def write(directory):
        (directory / "weights.bin").write_bytes(b"partial")
        raise error
    return write


def assert_previous_checkpoint_is_latest(root):
    assert checkpoint.latest(root).name == "iter-0001"
    assert not list(root.glob(".tmp-*")) and not (root / "iter-0002").exists()
    assert (root / "latest").read_text().strip() == "iter-0001"


@pytest.mark.parametrize("error", [
    OSError(errno.ENOSPC, "No space left on device"),
    # torch.save's zip writer when a write fails: no errno, only the free space says why
    RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 128 vs 0"),
], ids=["ENOSPC", "torch-unexpected-pos"])
def test_disk_full_is_one_resumable_line_and_keeps_previous_checkpoint(tmp_path, monkeypatch,
                                                                        error):
    root = tmp_path / "run" / "checkpoints"
    checkpoint.save(root, 1, write_file(b"one"), {"iteration": 1}, keep=2)
    little_free_space(monkeypatch)
    with pytest.raises(checkpoint.CheckpointError) as raised:
        checkpoint.save(root, 2, fills_the_disk_with(error), {"iteration": 2}, keep=2)
    assert raised.value.__cause__ is error
    assert raised.value.resumable
    line = raised.value.one_line(tmp_path / "run")
    assert line.startswith(f"disk full while writing checkpoint {root / 'iter-0002'} "
                           "(12 MiB free on /"), line
    assert line.endswith(f"[{tmp_path / 'run'} is intact: free some space, then run again with "
                         "--resume]"), line
    assert "\n" not in line
    assert_previous_checkpoint_is_latest(root)


def test_torch_write_failure_chained_to_enospc_is_disk_full(tmp_path):
    """torch.save into a file object: the writer's RuntimeError, then the file's close raises
    ENOSPC while handling it."""
    checkpoint.save(tmp_path, 1, write_file(b"one"), {"iteration": 1}, keep=2)

    def write(directory):
        try:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 "
                               "vs 598")
        finally:
            raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(checkpoint.CheckpointError, match="^disk full while writing checkpoint"):
        checkpoint.save(tmp_path, 2, write, {"iteration": 2}, keep=2)
    assert_previous_checkpoint_is_latest(tmp_path)


def test_torch_write_failure_with_space_left_keeps_its_traceback(tmp_path, monkeypatch):
    """The same RuntimeError on a disk with space to spare is not called a full disk."""
    checkpoint.save(tmp_path, 1, write_file(b"one"), {"iteration": 1}, keep=2)
    little_free_space(monkeypatch, free=50 << 30)
    error = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 128 vs 0")
    with pytest.raises(RuntimeError) as raised:
        checkpoint.save(tmp_path, 2, fills_the_disk_with(error), {"iteration": 2}, keep=2)
    assert raised.value is error
    assert_previous_checkpoint_is_latest(tmp_path)


def test_unrelated_error_while_writing_passes_through_unchanged(tmp_path, monkeypatch):
    checkpoint.save(tmp_path, 1, write_file(b"one"), {"iteration": 1}, keep=2)
    little_free_space(monkeypatch)
    error = RuntimeError("DeepSpeed: something else went wrong")
    with pytest.raises(RuntimeError) as raised:
        checkpoint.save(tmp_path, 2, fills_the_disk_with(error), {"iteration": 2}, keep=2)
    assert raised.value is error and not isinstance(raised.value, checkpoint.CheckpointError)
    assert_previous_checkpoint_is_latest(tmp_path)


def test_other_os_error_is_one_line_naming_the_checkpoint(tmp_path):
    checkpoint.save(tmp_path, 1, write_file(b"one"), {"iteration": 1}, keep=2)
    error = PermissionError(errno.EACCES, "Permission denied", str(tmp_path / "x"))
    with pytest.raises(checkpoint.CheckpointError,
                       match=r"writing checkpoint .*iter-0002 failed \(\[Errno 13\] Permission"):
        checkpoint.save(tmp_path, 2, fills_the_disk_with(error), {"iteration": 2}, keep=2)
    assert_previous_checkpoint_is_latest(tmp_path)
