"""The local placement: every part in this process (the default, and what tests use most)."""
from __future__ import annotations


class LocalPlacement:
    def rewarder(self, config):
        from rewarders.base import load_rewarder

        return load_rewarder(config.name, config.kwargs)

    def rollout(self, model_dir: str, config, *, dtype: str, seed: int):
        from selfplay.rollout import build_engine

        # One process: on a GPU the engine shares it with the trainer, so it takes less.
        return build_engine(config.engine, model_dir, dtype=dtype, seed=seed,
                            max_model_len=config.max_model_len, kv_cache_gb=config.kv_cache_gb,
                            gpu_memory_utilization=config.gpu_memory_utilization or 0.3)

    def trainer(self, model_dir: str, config, **options):
        from selfplay.train.trainer import Trainer

        return Trainer(model_dir, config, **options)

    def sync_weights(self, trainer, engine) -> None:
        """The trainer's weights into the engine, in memory."""
        engine.update_weights(trainer.named_weights())

    def actors_rss_mb(self) -> float | None:
        return None  # everything is in this process: rss_mb covers it

    def describe(self) -> str:
        return "local"

    def close(self) -> None:
        pass
