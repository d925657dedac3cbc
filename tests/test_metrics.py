import json

from selfplay.metrics import MetricsLog


def test_rewind_drops_records_after_the_checkpoint_and_restores_its_own(tmp_path):
    log = MetricsLog(tmp_path / "metrics.jsonl")
    for i in (1, 2, 4):
        log.append({"iteration": i})
    with open(log.path, "a") as handle:
        handle.write('{"iteration": 5, "cut')  # killed mid-write
    log.rewind(3, {"iteration": 3, "from": "checkpoint"})
    assert [r["iteration"] for r in log.read()] == [1, 2, 3]
    assert log.read()[-1]["from"] == "checkpoint"
    assert all(json.loads(line) for line in log.path.read_text().splitlines())
