"""A user plug-in for the tests: `flaky_rewards:FlakyRewarder` misbehaves on one call."""
import math
import os
import signal
import time
from pathlib import Path

from rewarders.letters import LettersRewarder


class FlakyRewarder(LettersRewarder):
    """Scores like `letters`, but call number `bad_call` (counted across processes in
    `counter_file`) raises, returns NaN, returns too few scores, hangs or kills its own
    process (as an out-of-memory kill would), per `mode`."""

    def __init__(self, counter_file: str, bad_call: int = 2, mode: str = "raise"):
        super().__init__()
        self.counter = Path(counter_file)
        self.bad_call, self.mode = bad_call, mode

    def score(self, prompts, completions, metadata):
        calls = int(self.counter.read_text()) + 1 if self.counter.exists() else 1
        self.counter.write_text(str(calls))
        scores = super().score(prompts, completions, metadata)
        if calls != self.bad_call:
            return scores
        if self.mode == "raise":
            raise ConnectionError("reward server went away")
        if self.mode == "hang":  # a reward server that never answers
            time.sleep(3600)
        if self.mode == "die":
            os.kill(os.getpid(), signal.SIGKILL)
        if self.mode == "nan":
            return [math.nan] + scores[1:]
        return scores[:-1]
