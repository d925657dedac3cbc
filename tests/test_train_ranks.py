"""The trainer as 2 data-parallel DeepSpeed ranks (two real processes, gloo, no Ray) makes the same
update as one process on the same pairs, and every rank reports the same statistics.

Tolerance: the ranks' gradients are summed by an all-reduce, and each rank runs its share of a
micro-batch as a smaller batch, so float sums happen in another order than in one process: the
results agree to rounding (measured: at most 3.2e-6 on weights, 3.8e-6 on margins), not bit for
bit.
"""
import os
import pickle
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy
import pytest

from selfplay.recipe import TrainConfig
from selfplay.train.trainer import Trainer
from test_train import make_dpo_trainer, make_pairs, make_trainer

REPO = Path(__file__).resolve().parent.parent
SHM = Path("/dev/shm")
WORLD = 2
# Largest difference seen between 2 ranks and 1 process: 3.2e-6 (DPO), 1.8e-6 (ZeRO-3), 9.4e-7
# (ZeRO-2), from fp32 rounding in another summation order; 1e-5 leaves room and still catches a
# pair weighted wrongly (Adam then moves weights by ~lr = 1e-3).
WEIGHT_TOLERANCE = 1e-5
SCORE_TOLERANCE = 1e-5  # losses, margins, γ, gradient norms: relative to max(1, |value|)


class Targets:
    """Per-pair targets as the trainer owns them (γ-PO's interface): margins and γ in, one target
    per pair out; no state to save."""

    def __init__(self, rule):
        self.rule = rule

    def __call__(self, margins, gamma):
        return self.rule(margins, gamma)

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


def micro_batch_targets(margins, gamma):
    """One γ per pair that depends on the whole micro-batch (as γ-PO's does): a rank that saw
    only its own share would compute other values."""
    mean = sum(margins) / len(margins)
    return [gamma + 0.1 * (margin - mean) + 0.01 * len(margins) for margin in margins]


def alternate_active_targets(margins, gamma):
    """Pairs at even positions of the micro-batch active (M < γ), odd ones filtered: with 2 ranks
    rank 0 holds only active pairs and rank 1 none, so a count of one rank's own active pairs
    would scale RePO's `active` reduction wrongly."""
    return [margin + (0.05 if position % 2 == 0 else -0.05)
            for position, margin in enumerate(margins)]


def scenarios(model_dir, checkpoint_dir=None, export_dir=None):
    """Runs every scenario on this process's trainer(s); the same code for 1 rank and for N.
    Returns {name: results}; weights only on rank 0 (state_dict_numpy). Without a
    `checkpoint_dir`, no save/load/export."""
    results = {}

    # 8 pairs in micro-batches of 4: 2 pairs per rank per micro-batch, ZeRO-2, a γ per pair that
    # needs the whole micro-batch's margins.
    trainer = make_trainer(model_dir, zero_stage=2, pair_targets=Targets(micro_batch_targets))
    results["zero2"] = {
        "stats": [_train(trainer, make_pairs(8), 3.0, iteration) for iteration in (1, 2)],
        "margins": trainer.margins(make_pairs(8)),
        "weights": trainer.state_dict_numpy(),
        "rank": (trainer.rank, trainer.ranks.world_size)}

    # 7 pairs, micro-batches of 3 in windows of 6: micro-batches split 2/1, then a window of one
    # pair that the second rank has no share of. DPO: the reference log-probs are split too.
    trainer = make_dpo_trainer(model_dir, lr=1e-3, micro_batch_size=3, grad_accum=2,
                               zero_stage=2)
    results["uneven_dpo"] = {
        "stats": [_train(trainer, make_pairs(7), 0.5, iteration) for iteration in (1, 2)],
        "margins": trainer.margins(make_pairs(7)),
        "weights": trainer.state_dict_numpy()}

    # RePO averaged over the active pairs of each micro-batch, counted over both ranks.
    config = TrainConfig(lr=1e-3, micro_batch_size=4, warmup_ratio=0.0, lr_schedule="constant",
                         zero_stage=2)
    trainer = Trainer(str(model_dir), config, loss_name="repo", beta=None, seed=0, pad_id=0,
                      iterations=25, pairs_per_iteration=16, reduction="active",
                      pair_targets=Targets(alternate_active_targets))
    results["repo_active"] = {
        "stats": [_train(trainer, make_pairs(8), 0.5, iteration) for iteration in (1, 2)],
        "margins": trainer.margins(make_pairs(8)),
        "weights": trainer.state_dict_numpy()}

    # ZeRO-3 shards the weights: state_dict_numpy gathers them; margins() of 5 pairs leaves the
    # second rank without a pair in the second micro-batch (its forward is still collective).
    trainer = make_trainer(model_dir, zero_stage=3)
    stats = [_train(trainer, make_pairs(8), 0.5, 1)]
    results["zero3"] = {"stats": stats, "margins": trainer.margins(make_pairs(5)),
                        "weights": trainer.state_dict_numpy()}
    if checkpoint_dir is None:
        return results

    # Save from every rank, load into a fresh trainer on every rank: same weights, and the next
    # update (optimizer state included) continues identically.
    trainer.save(checkpoint_dir)
    restored = make_trainer(model_dir, zero_stage=3)
    restored.load(checkpoint_dir)
    loaded = restored.state_dict_numpy()
    for each in (trainer, restored):
        each.train(make_pairs(8), gamma=0.5, iteration=2)
    restored.export(export_dir, _tokenizer(model_dir))
    results["resume"] = {"loaded": loaded, "continued": trainer.state_dict_numpy(),
                         "restored_continued": restored.state_dict_numpy()}
    return results


def _train(trainer, pairs, gamma, iteration):
    """TrainStats and the norm of the last step's gradient: Adam and clipping are blind to a
    gradient scaled by a constant (a rank share off by the world size), the norm is not."""
    stats = trainer.train(pairs, gamma=gamma, iteration=iteration)
    return stats, float(trainer.engine.get_global_grad_norm())


def _tokenizer(model_dir):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(model_dir)


def rank_main(model_dir, out_dir, scenario="all"):
    """One rank's process: every scenario, results pickled to out_dir/rank<r>.pkl; or "stall":
    rank 1 stops answering after building its trainer, rank 0 records how its update ended."""
    from selfplay.runtime import configure_environment
    configure_environment()
    import torch.distributed as dist

    rank = int(os.environ["RANK"])
    out = Path(out_dir)
    if scenario == "stall":
        trainer = make_trainer(model_dir, zero_stage=2)
        if rank == 1:
            time.sleep(120)  # alive but silent: gloo sees no closed connection, only the timeout
            os._exit(0)
        try:
            trainer.train(make_pairs(8), gamma=0.5, iteration=1)
            outcome = "finished"
        except Exception as error:  # noqa: BLE001 - what ended it is the result
            outcome = f"{type(error).__name__}: {error}"
        (out / "rank0.txt").write_text(outcome)
        os._exit(0)  # the group is broken: destroying it would wait on the silent peer
    results = scenarios(model_dir, str(out / "checkpoint"), str(out / "export"))
    (out / f"rank{rank}.pkl").write_bytes(pickle.dumps(results))
    dist.destroy_process_group()  # a clean exit: no peer left waiting on this one


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _launch_ranks(model_dir, out_dir, scenario="all", timeout_s=120
                  ) -> list[subprocess.Popen]:
    port = _free_port()
    processes = []
    for rank in range(WORLD):
        env = {key: value for key, value in os.environ.items() if key != "LOCAL_SIZE"}
        env.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD),
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1",
                   SELFPLAY_DIST_TIMEOUT_S=str(timeout_s),
                   PYTHONPATH=os.pathsep.join([str(REPO / "tests"), str(REPO)]))
        code = ("import test_train_ranks as t; "
                f"t.rank_main({str(model_dir)!r}, {str(out_dir)!r}, {scenario!r})")
        log = open(Path(out_dir) / f"rank{rank}.log", "w")
        processes.append(subprocess.Popen([sys.executable, "-c", code], env=env, stdout=log,
                                          stderr=subprocess.STDOUT, cwd=REPO))
    return processes


@pytest.fixture(scope="module")
def runs(tiny_model_dir, tmp_path_factory):
    """(per-rank results of the 2-rank world, one process's results, files left in /dev/shm,
    the ranks' exit codes, the export directory)."""
    ranks_dir = tmp_path_factory.mktemp("ranks")
    shm_before = set(os.listdir(SHM)) if SHM.is_dir() else set()
    processes = _launch_ranks(tiny_model_dir, ranks_dir)
    try:
        # The one-process reference runs here meanwhile, in this (world size 1) process.
        single = scenarios(tiny_model_dir)
        codes = [process.wait(timeout=600) for process in processes]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    shm_left = sorted((set(os.listdir(SHM)) if SHM.is_dir() else set()) - shm_before)
    logs = "\n".join((ranks_dir / f"rank{r}.log").read_text()[-3000:] for r in range(WORLD))
    assert codes == [0] * WORLD, logs
    per_rank = [pickle.loads((ranks_dir / f"rank{r}.pkl").read_bytes()) for r in range(WORLD)]
    return per_rank, single, shm_left, ranks_dir / "export"


def _max_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float(numpy.abs(a[name] - b[name]).max()) for name in a)


def _close(expected):
    # DPO's margins are summed log-probs (~10): compare them relatively.
    return pytest.approx(expected, rel=SCORE_TOLERANCE, abs=SCORE_TOLERANCE)


def _assert_same_update(ranked, single):
    for (ours, our_norm), (theirs, their_norm) in zip(ranked["stats"], single["stats"]):
        assert our_norm > 0 and our_norm == _close(their_norm)
        assert (ours.steps, ours.tokens) == (theirs.steps, theirs.tokens)
        assert ours.loss == _close(theirs.loss)
        assert ours.margins == _close(theirs.margins)
        assert ours.gammas == _close(theirs.gammas)
    assert ranked["margins"] == _close(single["margins"])
    assert _max_difference(ranked["weights"], single["weights"]) < WEIGHT_TOLERANCE


def test_every_rank_reports_the_same_statistics_and_margins(runs):
    per_rank, _, _, _ = runs
    for name in ("zero2", "uneven_dpo", "zero3"):
        first, second = (results[name] for results in per_rank)
        assert first["stats"] == second["stats"], name
        assert first["margins"] == second["margins"], name
    assert [results["zero2"]["rank"] for results in per_rank] == [(0, WORLD), (1, WORLD)]


def test_two_ranks_make_the_one_process_update(runs):
    per_rank, single, _, _ = runs
    assert single["zero2"]["rank"] == (0, 1)
    _assert_same_update(per_rank[0]["zero2"], single["zero2"])


def test_uneven_shares_and_a_rank_without_pairs_still_make_the_same_update(runs):
    per_rank, single, _, _ = runs
    # 7 pairs: both iterations really took a step on the lone 7th pair's window.
    assert [stats.steps for stats, _ in single["uneven_dpo"]["stats"]] == [2, 2]
    _assert_same_update(per_rank[0]["uneven_dpo"], single["uneven_dpo"])


def test_repo_averaged_over_active_pairs_counts_them_over_both_ranks(runs):
    per_rank, single, _, _ = runs
    for stats, _ in single["repo_active"]["stats"]:  # half the pairs active, as intended
        assert sum(m < g for m, g in zip(stats.margins, stats.gammas)) == 4
    _assert_same_update(per_rank[0]["repo_active"], single["repo_active"])


def test_zero3_weights_are_gathered_on_rank_0_only(runs):
    per_rank, single, _, _ = runs
    assert per_rank[1]["zero3"]["weights"] is None
    assert len(per_rank[0]["zero3"]["margins"]) == 5
    _assert_same_update(per_rank[0]["zero3"], single["zero3"])


def test_save_then_load_on_every_rank_restores_and_continues_exactly(runs):
    per_rank, _, _, _ = runs
    resume = per_rank[0]["resume"]
    trained = per_rank[0]["zero3"]["weights"]
    assert _max_difference(resume["loaded"], trained) == 0.0
    assert _max_difference(resume["restored_continued"], resume["continued"]) == 0.0
    assert _max_difference(resume["continued"], trained) > 0.0  # the last update did move them


def test_rank_0_exports_a_model_directory_of_the_trained_weights(runs):
    from transformers import AutoModelForCausalLM

    per_rank, _, _, export_dir = runs
    loaded = AutoModelForCausalLM.from_pretrained(export_dir)
    expected = per_rank[0]["resume"]["restored_continued"]
    assert {name: tensor.detach().numpy() for name, tensor in loaded.named_parameters()
            }.keys() == expected.keys()
    for name, tensor in loaded.named_parameters():
        assert numpy.array_equal(tensor.detach().numpy(), expected[name]), name


@pytest.mark.skipif(not SHM.is_dir(), reason="no /dev/shm on this system")
def test_ranks_exit_cleanly_and_leave_nothing_in_dev_shm(runs):
    _, _, shm_left, _ = runs  # the fixture already required exit code 0 of every rank
    assert shm_left == []


def test_a_silent_peer_ends_the_update_at_the_process_group_timeout(tiny_model_dir, tmp_path):
    """SELFPLAY_DIST_TIMEOUT_S bounds a collective: without it a stalled rank would hold its
    peers for DeepSpeed's default 10 minutes (the process wait below would run out first)."""
    processes = _launch_ranks(tiny_model_dir, tmp_path, scenario="stall", timeout_s=3)
    try:
        processes[0].wait(timeout=100)
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    assert processes[0].returncode == 0, (tmp_path / "rank0.log").read_text()[-3000:]
    outcome = (tmp_path / "rank0.txt").read_text()
    assert outcome != "finished" and "timed out" in outcome.lower(), outcome
