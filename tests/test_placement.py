"""The local and Ray placements, and the trainers they hand out, satisfy the protocols the loop
relies on (selfplay/distributed/base.py): every member exists, with the same parameters."""
import inspect

import pytest

from selfplay.distributed import LocalPlacement, Placement, Trainer


def members(protocol) -> dict:
    return {name: value for name, value in vars(protocol).items()
            if not name.startswith("_") and (callable(value) or isinstance(value, property))}


def parameters(function) -> list[str]:
    return [name for name in inspect.signature(function).parameters if name != "self"]


def check(cls, protocol) -> None:
    for name, declared in members(protocol).items():
        assert hasattr(cls, name), f"{cls.__name__} lacks {name}"
        if callable(declared):
            assert parameters(getattr(cls, name)) == parameters(declared), (cls.__name__, name)


def test_the_local_placement_and_trainer_satisfy_the_protocols():
    from selfplay.train.trainer import Trainer as LocalTrainer

    check(LocalPlacement, Placement)
    check(LocalTrainer, Trainer)


def test_the_ray_placement_and_trainer_group_satisfy_the_protocols():
    pytest.importorskip("ray")
    from selfplay.distributed.ray_placement import RayPlacement, RayTrainerGroup

    check(RayPlacement, Placement)
    check(RayTrainerGroup, Trainer)


def test_the_local_placement_moves_the_trainers_weights_into_the_engine():
    class Engine:
        def update_weights(self, named_tensors):
            self.received = list(named_tensors)

    class Weights:
        def named_weights(self):
            yield from [("w", 1.0), ("b", 2.0)]

    engine = Engine()
    LocalPlacement().sync_weights(Weights(), engine)
    assert engine.received == [("w", 1.0), ("b", 2.0)]
