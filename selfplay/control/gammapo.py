"""The γ-PO baseline (Sun et al., ACL 2025): per-pair target margins."""
from __future__ import annotations

from typing import Literal, Sequence

import numpy as np
from pydantic import Field

from selfplay.control import FixedConfig, FixedGamma
from selfplay.schema import Section


class GammaPOConfig(Section):
    controller: Literal["gammapo"] = "gammapo"
    value: float = Field(0.5, ge=0, description="The mean per-pair target γ0.")
    tau: float = Field(10.0, gt=0, description="KL temperature (larger: closer to uniform "
                       "targets).")
    beta: float = Field(10.0, gt=0, description="Logistic scale of the margins.")


class GammaPOMargins(FixedGamma):
    """The γ-PO baseline (Sun et al., ACL 2025): a per-pair target margin from each batch.

    γ_i = γ0·B·p_i, where p is a distribution over the B pairs of a micro-batch that minimises
    mean(−log σ(β·M_i − β·γ_i)) + τ·KL(p ‖ uniform), found by 20 steps of exponentiated gradient
    as in the authors' code: confident pairs (large margin) get larger targets, ambiguous ones
    smaller, and the mean target stays γ0. Here M_i is the pair's length-normalised margin.
    """

    name = "gammapo"

    def __init__(self, config: GammaPOConfig, iterations: int | None = None,
                 steps: int = 20) -> None:
        super().__init__(FixedConfig(value=config.value))  # the mean target γ0, fixed over the run
        self.gamma0 = self.value
        self.tau, self.beta, self.steps = config.tau, config.beta, steps

    def pair_gammas(self, margins: Sequence[float]) -> list[float]:
        gaps = self.beta * np.asarray(margins, dtype=np.float64)
        size = len(gaps)
        p = np.full(size, 1.0 / size)
        rate = min(0.5 / self.tau, 1.0)
        for _ in range(self.steps):
            gammas = self.beta * self.gamma0 * size * p
            grad = (self.tau * (1.0 + np.log(size * p + 1e-12))
                    + self.beta * self.gamma0 / (1.0 + np.exp(gaps - gammas)))
            p = p * np.exp(-rate * grad)
            p /= p.sum()
        return (self.gamma0 * size * p).tolist()
