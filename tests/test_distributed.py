"""The Ray placement: the same recipe across processes, agreeing with a local run."""
import json
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from selfplay.distributed.sizing import (Role, bundle, missing_resource, plan_roles,
                                         split_evenly, unplaceable)
from selfplay.recipe import DistributedConfig, RecipeError, load

from conftest import REPO, TINY_RECIPE, run_cli

RAY = ["distributed.backend=ray", "distributed.object_store_gb=0.5"]
SHORT = ["--no-progress", "loop.iterations=2", "data.prompts_per_iteration=16"]


def ray_processes() -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter(["name", "cmdline"]):
        text = " ".join([process.info["name"] or ""] + (process.info["cmdline"] or []))
        if "ray::" in text or "raylet" in text or "gcs_server" in text:
            found.append(process)
    return found


@pytest.fixture
def no_ray_left_behind():
    before = {p.pid for p in ray_processes()}
    yield
    deadline = time.time() + 20  # a private Ray's processes take a moment to exit
    while time.time() < deadline:
        left = [p for p in ray_processes() if p.pid not in before and p.is_running()
                and p.status() != psutil.STATUS_ZOMBIE]
        if not left:
            return
        time.sleep(1)
    pytest.fail(f"Ray processes outlived the run: {[p.info['name'] for p in left]}")


def records(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def weights_digest(run_dir) -> str:
    import hashlib
    return hashlib.sha256(b"".join(p.read_bytes() for p in sorted(
        (run_dir / "final").glob("*.safetensors")))).hexdigest()


# --- sizing: pure arithmetic -------------------------------------------------------------------
def test_a_private_ray_shares_the_cores_among_the_actors():
    config = DistributedConfig(backend="ray", trainer_ranks=2, rollout_engines=1)
    roles = plan_roles(config, cores=2, private=True, need_engine=True)
    assert [(r.name, r.count, r.threads) for r in roles] == [("trainer rank", 2, 1),
                                                            ("rollout engine", 1, 2)]
    assert sum(r.count * r.cpus for r in roles) <= 2  # never more than the machine
    assert missing_resource({"CPU": 2.0}, roles) is None
    offline = plan_roles(config, cores=2, private=True, need_engine=False)
    assert [r.name for r in offline] == ["trainer rank"]


def test_a_missing_gpu_is_named_before_any_work():
    roles = [Role("trainer rank", 2, 1.0, 1.0, 1), Role("rollout engine", 1, 1.0, 0.5, 1)]
    assert missing_resource({"CPU": 8.0}, roles) == (
        "the Ray cluster has 0 GPUs but the run needs 2.5 (2 trainer ranks × 1, 1 rollout "
        "engine × 0.5); lower distributed.gpus_per_trainer/gpus_per_engine/"
        "gpus_per_reward_worker or use a larger "
        "cluster")
    assert "has 2 CPUs but the run needs 3" in missing_resource(
        {"CPU": 2.0, "GPU": 4.0}, [Role("trainer rank", 3, 1.0, 1.0, 1)])


def test_an_actor_larger_than_every_node_is_named_though_the_cluster_total_suffices():
    # Three nodes of 2 CPUs: 6 in all, but a 3-CPU actor fits on none (Ray would wait forever).
    nodes = [{"CPU": 2.0}] * 3
    roles = [Role("trainer rank", 1, 3.0, 0.0, 3), Role("rollout engine", 1, 3.0, 0.0, 3)]
    assert missing_resource({"CPU": 6.0}, roles) is None
    assert unplaceable(nodes, roles) == (
        "a trainer rank needs 3 CPUs on one node, but no node of the Ray cluster has that (at "
        "most 2 CPUs); lower distributed.cpus_per_actor or add larger nodes")
    gpu_nodes = [{"CPU": 8.0, "GPU": 1.0}, {"CPU": 2.0, "GPU": 4.0}]
    assert unplaceable(gpu_nodes, [Role("rollout engine", 1, 4.0, 2.0, 4)]).startswith(
        "a rollout engine needs 4 CPUs, 2 GPUs on one node, but no node of the Ray cluster has "
        "that (at most 8 CPUs, 4 GPUs); lower distributed.cpus_per_actor")
    assert unplaceable(gpu_nodes, [Role("rollout engine", 1, 2.0, 2.0, 2)]) is None
    assert bundle(Role("trainer rank", 1, 1.5, 0.0, 1)) == {"CPU": 1.5}


def test_a_reward_workers_gpu_is_reserved_with_the_others():
    config = DistributedConfig(backend="ray", reward_workers=2, gpus_per_reward_worker=1)
    roles = {r.name: r for r in plan_roles(config, cores=8, private=False, need_engine=True)}
    assert roles["reward worker"].gpus == 1 and roles["trainer rank"].gpus == 0
    assert "needs 2 (2 reward workers × 1)" in missing_resource({"CPU": 8.0}, list(roles.values()))
    with pytest.raises(ValueError, match="needs reward_workers ≥ 1"):
        DistributedConfig(backend="ray", gpus_per_reward_worker=1)


def test_split_evenly_keeps_order_and_balance():
    assert split_evenly(list(range(7)), 3) == [[0, 1, 2], [3, 4], [5, 6]]
    assert split_evenly([1], 2) == [[1], []]


def test_more_than_one_of_anything_needs_ray():
    with pytest.raises(RecipeError, match="distributed.trainer_ranks: more than 1 needs "
                                          "distributed.backend: ray"):
        load(TINY_RECIPE, ["distributed.trainer_ranks=2"])
    with pytest.raises(RecipeError, match="distributed.reward_workers: needs"):
        load(TINY_RECIPE, ["distributed.reward_workers=1"])


# --- the weight group: two plain processes -------------------------------------------------------
JOIN_AND_RECEIVE_ONCE = """
import sys, torch
from selfplay.distributed.weight_sync import WeightGroup
spec = [("a", (2, 3), torch.float32), ("b", (4,), torch.bfloat16)]
group = WeightGroup.join("127.0.0.1", int(sys.argv[1]), 1, 2, 20, spec)
print([(name, tensor.dtype, tensor.tolist()) for name, tensor in group.receive()])
"""


def test_the_weight_group_delivers_the_tensors_and_a_vanished_engine_is_one_error():
    import torch

    from selfplay.distributed.weight_sync import WeightGroup, WeightSyncError, host_store

    store = host_store("127.0.0.1", timeout_s=20)
    engine = subprocess.Popen([sys.executable, "-c", JOIN_AND_RECEIVE_ONCE, str(store.port)],
                              cwd=REPO, stdout=subprocess.PIPE, text=True)
    group = WeightGroup(store, 0, 2, timeout_s=20)
    weights = [("a", torch.arange(6.0).reshape(2, 3)), ("b", torch.tensor([1.5, -2, 0, 3],
                                                                        dtype=torch.bfloat16))]
    group.send(weights)
    received, _ = engine.communicate(timeout=60)
    assert received.strip() == ("[('a', torch.float32, [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]), "
                                "('b', torch.bfloat16, [1.5, -2.0, 0.0, 3.0])]")
    with pytest.raises(WeightSyncError, match=r"the weight sync over gloo failed \(Connection "
                                              r"closed by peer .*\)$") as failure:
        group.send(weights)  # the engine has exited
    assert failure.value.resumable  # the CLI adds "RUN_DIR is intact: … --resume"


# --- real runs ---------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.ray
def test_two_ranks_under_ray_match_a_local_run(tmp_path, no_ray_left_behind):
    """Same seeds, same global batch: the same completions, and losses and margins that agree
    to all-reduce rounding (2 ranks × 4 pairs per micro-batch vs 1 × 8)."""
    local, remote = tmp_path / "local", tmp_path / "ray"
    result = run_cli("run", TINY_RECIPE, "-o", local, *SHORT)
    assert result.returncode == 0, result.stderr[-3000:]
    result = run_cli("run", TINY_RECIPE, "-o", remote, *SHORT, *RAY,
                     "distributed.trainer_ranks=2", "train.zero_stage=2")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "placement: a private Ray: 2 trainer ranks, 1 rollout engine" in result.stdout
    first_local, first_ray = records(local)[0], records(remote)[0]
    assert first_ray.keys() == first_local.keys() | {"actors_rss_mb"}
    assert first_ray["reward_mean"] == first_local["reward_mean"]  # identical completions
    for key in ("loss", "margin_p10", "margin_p50", "margin_p90", "active_fraction"):
        assert first_ray[key] == pytest.approx(first_local[key], abs=1e-5), key
    assert (remote / "final" / "config.json").exists()
    assert not (remote / ".ray-processes.json").exists()  # a clean end forgets its processes
    assert run_cli("report", remote).returncode == 0


@pytest.mark.slow
@pytest.mark.ray
def test_kill_minus_9_of_the_driver_then_resume_is_exact(tmp_path, no_ray_left_behind):
    shape = [*RAY, "distributed.trainer_ranks=2", "train.zero_stage=2", "--no-progress",
             "data.prompts_per_iteration=16", "loop.iterations=4"]
    straight = tmp_path / "straight"
    assert run_cli("run", TINY_RECIPE, "-o", straight, *shape).returncode == 0

    killed = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": f"{REPO / 'tests' / 'plugins'}{os.pathsep}{REPO}"}
    driver = subprocess.Popen([sys.executable, "-m", "selfplay.cli", "run", str(TINY_RECIPE),
                               "-o", str(killed), *shape], cwd=REPO, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    for line in driver.stdout:  # kill it right after iteration 2's checkpoint and line
        if line.startswith("iter 2/4"):
            driver.send_signal(signal.SIGKILL)
            break
    driver.wait(timeout=60)
    recorded = json.loads((killed / ".ray-processes.json").read_text())
    assert recorded  # what the killed driver's Ray left running is known by pid

    result = run_cli("run", TINY_RECIPE, "-o", killed, "--resume", *shape)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resuming" in result.stdout and "iter 3/4" in result.stdout
    assert weights_digest(killed) == weights_digest(straight)
    assert [r["iteration"] for r in records(killed)] == [1, 2, 3, 4]
    for entry in recorded:  # the killed run's Ray is gone
        assert not psutil.pid_exists(entry["pid"]) or psutil.Process(
            entry["pid"]).create_time() != entry["started"]


@pytest.mark.slow
@pytest.mark.ray
def test_a_dead_actor_ends_the_run_in_one_line_and_the_run_resumes(tmp_path,
                                                                   no_ray_left_behind):
    run_dir, counter = tmp_path / "run", tmp_path / "calls"
    overrides = [*SHORT, *RAY, "distributed.reward_workers=1", "reward.name=flaky_rewards:"
                 "FlakyRewarder", f"reward.kwargs={{counter_file: {counter}, mode: die}}",
                 "eval.prompts=null"]
    started = time.time()
    result = run_cli("run", TINY_RECIPE, "-o", run_dir, *overrides)
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert "a reward worker actor died" in lines[0] and "--resume" in lines[0]
    assert time.time() - started < 300
    # The kill came in iteration 2; iteration 1's checkpoint resumes (the counter moved on).
    result = run_cli("run", TINY_RECIPE, "-o", run_dir, "--resume", *overrides)
    assert result.returncode == 0, result.stderr[-3000:]
    assert [r["iteration"] for r in records(run_dir)] == [1, 2]


@pytest.mark.slow
@pytest.mark.ray
def test_asking_for_a_gpu_the_cluster_lacks_fails_before_any_work(tmp_path, no_ray_left_behind):
    result = run_cli("run", TINY_RECIPE, "-o", tmp_path / "run", *SHORT, *RAY,
                     "distributed.gpus_per_trainer=1")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "error: the Ray cluster has 0 GPUs but the run needs 1 (1 trainer rank × 1); lower "
        "distributed.gpus_per_trainer/gpus_per_engine/gpus_per_reward_worker or use a larger "
        "cluster"]
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


@pytest.mark.slow
@pytest.mark.ray
def test_actors_no_node_can_hold_or_a_busy_cluster_end_the_start_in_one_line(tmp_path):
    import ray
    from ray.cluster_utils import Cluster
    from ray.util.placement_group import placement_group

    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    os.environ["RAY_AUTH_MODE"] = "disabled"
    cluster = Cluster(initialize_head=True, connect=False,
                      head_node_args={"num_cpus": 1, "object_store_memory": 200 * 2**20})
    try:
        for _ in range(2):
            cluster.add_node(num_cpus=1, object_store_memory=200 * 2**20)
        cluster.wait_for_nodes()
        joined = [*SHORT, *RAY, f"distributed.address={cluster.address}", "rollout.engine=hf"]
        # Two actors of 1.5 CPUs: 3 in all, as the cluster has, but no node holds 1.5.
        big = run_cli("run", TINY_RECIPE, "-o", tmp_path / "big", *joined,
                      "distributed.cpus_per_actor=1.5", env=env)
        assert big.returncode == 1
        assert big.stderr.strip().splitlines()[-1] == (
            "error: a trainer rank needs 1.5 CPUs on one node, but no node of the Ray cluster "
            "has that (at most 1 CPUs); lower distributed.cpus_per_actor or add larger nodes")
        # Another job holds two of the three CPUs: the run's two actors cannot both be placed.
        ray.init(address=cluster.address)
        held = placement_group([{"CPU": 1}] * 2, strategy="SPREAD")
        ray.get(held.ready(), timeout=60)
        busy = run_cli("run", TINY_RECIPE, "-o", tmp_path / "busy", *joined,
                       "distributed.timeout_s=5", env=env)
        assert busy.returncode == 1
        line = busy.stderr.strip().splitlines()[-1]
        assert line.startswith("error: Ray could not place the run's actors (1 trainer rank × "
                               "{'CPU': 1.0}, 1 rollout engine × {'CPU': 1.0}) within "
                               "distributed.timeout_s = 5 s"), line
        assert not (tmp_path / "busy" / "metrics.jsonl").exists()
    finally:
        ray.shutdown()
        cluster.shutdown()


@pytest.mark.slow
@pytest.mark.ray
def test_address_auto_joins_the_running_cluster_and_leaves_it_running(tmp_path):
    ray_bin = os.path.join(os.path.dirname(sys.executable), "ray")
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_worker_niceness": "0"}
    subprocess.run([ray_bin, "start", "--head", "--num-cpus=2", "--include-dashboard=false",
                    "--object-store-memory=500000000", "--disable-usage-stats"], env=env,
                   check=True, capture_output=True, timeout=120)
    try:
        result = run_cli("run", TINY_RECIPE, "-o", tmp_path / "run", *SHORT, *RAY,
                         "distributed.address=auto", "loop.iterations=1", env=env)
        assert result.returncode == 0, result.stderr[-3000:]
        assert "placement: Ray at auto: 1 trainer rank, 1 rollout engine" in result.stdout
        status = subprocess.run([ray_bin, "status"], env=env, capture_output=True, text=True,
                                timeout=60)
        assert status.returncode == 0  # the run disconnected; the cluster still runs
    finally:
        subprocess.run([ray_bin, "stop", "--force"], env=env, capture_output=True, timeout=120)


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.parametrize("weight_sync", ["object_store", "gloo"])
def test_weights_reach_the_engine_actor(weight_sync, tmp_path, tiny_model_dir,
                                        no_ray_left_behind):
    """After a sync the engine actor scores a fixed sequence as the trained weights do, and
    before it as the old ones did: a sync that silently keeps old weights fails here. Over gloo,
    a sync to an engine that died then ends in the one-line error, long before the timeout."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from selfplay.distributed.ray_placement import DistributedError, RayPlacement
    from test_train import make_pairs

    recipe = load(TINY_RECIPE, [*RAY, "distributed.trainer_ranks=2", "train.zero_stage=3",
                                "train.lr=5e-3", "train.micro_batch_size=4",
                                f"distributed.weight_sync={weight_sync}",
                                "distributed.timeout_s=120"])
    placement = RayPlacement(recipe, need_engine=True, run_dir=tmp_path)
    try:
        engine = placement.rollout(str(tiny_model_dir), recipe.rollout, dtype="float32", seed=0)
        trainer = placement.trainer(str(tiny_model_dir), recipe.train, loss_name="repo",
                                    beta=None, seed=0, iterations=3, pairs_per_iteration=8,
                                    pad_id=0)
        pairs = make_pairs(8)
        for iteration in range(1, 4):
            trainer.train(pairs, 1.0, iteration)
        probe = pairs[0]
        before = engine.sequence_logprobs(probe.prompt_ids, probe.chosen.token_ids)
        placement.sync_weights(trainer, engine)
        after = engine.sequence_logprobs(probe.prompt_ids, probe.chosen.token_ids)
        # The actors' memory is read from their own processes: 2 ranks and 1 engine, as the
        # process table shows them now (RSS moves a little between the two reads).
        actors = [p for p in ray_processes() if any(
            title in " ".join(p.cmdline()) for title in ("TrainerRank", "EngineWorker"))]
        assert len(actors) == 3
        by_table = sum(p.memory_info().rss for p in actors) / 2**20
        assert placement.actors_rss_mb() == pytest.approx(by_table, rel=0.05)
        trainer.export(str(tmp_path / "trained"), AutoTokenizer.from_pretrained(tiny_model_dir))
        if weight_sync == "gloo":  # killed as the OS would: gloo may notice before Ray does
            next(p for p in ray_processes() if "EngineWorker" in " ".join(p.cmdline())).kill()
            started = time.time()
            with pytest.raises(DistributedError) as failure:
                placement.sync_weights(trainer, engine)
            assert time.time() - started < 60  # not gloo's 120 s timeout
            message = str(failure.value)
            assert "\n" not in message and failure.value.resumable
            assert "rollout engine actor died" in message or "weight sync" in message, message
    finally:
        placement.close()
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "trained", dtype=torch.float32)
    with torch.no_grad():
        ids = torch.tensor([probe.prompt_ids + probe.chosen.token_ids])
        logps = model(ids).logits[0].log_softmax(-1)
    start = len(probe.prompt_ids)
    expected = [logps[start - 1 + i, t].item() for i, t in enumerate(probe.chosen.token_ids)]
    assert after == pytest.approx(expected, abs=1e-4)
    assert max(abs(b - e) for b, e in zip(before, expected)) > 1e-2


@pytest.mark.slow
@pytest.mark.ray
def test_a_killed_trainer_rank_ends_the_run_within_seconds(tmp_path, no_ray_left_behind):
    run_dir = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": f"{REPO / 'tests' / 'plugins'}{os.pathsep}{REPO}"}
    driver = subprocess.Popen([sys.executable, "-m", "selfplay.cli", "run", str(TINY_RECIPE),
                               "-o", str(run_dir), *SHORT, *RAY, "loop.iterations=20",
                               "distributed.trainer_ranks=2"], cwd=REPO, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in driver.stdout:
        if line.startswith("iter 1/20"):
            break
    rank = next(p for p in ray_processes() if "TrainerRank" in " ".join(p.cmdline()))
    rank.kill()
    killed = time.time()
    _, stderr = driver.communicate(timeout=120)
    assert time.time() - killed < 60  # not the process group's 300 s timeout
    assert driver.returncode == 1
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "a trainer rank actor died" in lines[0], stderr[-2000:]
    assert f"{run_dir} is intact" in lines[0] and "--resume" in lines[0]


def test_a_ranks_local_gpu_is_the_one_ray_assigned_whether_or_not_ray_hides_the_others():
    from selfplay.distributed.ray_actors import local_gpu_index
    assert local_gpu_index([], None) == 0  # CPU
    assert local_gpu_index([3], "3") == 0  # Ray shows the actor its own GPU only
    assert local_gpu_index([3], None) == 3  # RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES
    assert local_gpu_index(["2"], "0,2,5") == 1  # the user's mask, Ray told not to set it


def test_an_actor_that_cannot_see_the_run_directory_or_the_model_stops_the_start(tmp_path):
    from selfplay.distributed.ray_actors import Actor
    from selfplay.distributed.ray_group import DistributedError
    from selfplay.distributed.ray_placement import RayPlacement

    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    run_dir = tmp_path / "run"
    run_dir.mkdir()

    class Group:  # answers as actors on another machine would, through the real check
        role = "trainer rank"

        def __init__(self, hide):
            self.hide = hide

        def run(self, method, marker, token, model_config):
            here = Actor().sees(marker, token, model_config)
            return [here, (here[0] and "run" not in self.hide, here[1] and "model" not in self.hide,
                           "10.0.0.2")]

    placement = object.__new__(RayPlacement)
    placement.run_dir = run_dir
    placement._check_shared(Group(hide=()), str(model))  # both seen: no error
    with pytest.raises(DistributedError) as error:
        placement._check_shared(Group(hide=("run", "model")), str(model))
    assert str(error.value) == (
        f"trainer rank 1 (node 10.0.0.2) cannot see the run directory {run_dir} or the model "
        f"{model}: with Ray on several machines, put them on a file system every node mounts "
        "at the same path (NFS, a cluster file system)")
    assert not (run_dir / ".shared-check").exists()
