"""`masa train` as torchrun starts it, for tests.

The tiny random model never answers an arithmetic problem, so every advantage would be 0 and no weight
would move; answer checking is replaced by a reward that varies within a group (by completion length).
MASA_TEST_DIE=RANK:STEP makes that rank exit abruptly at the start of that (1-based) step, as a crashed or
killed worker would.
"""

import os
import sys

import masa.trainer
from masa.cli import main


def _length_reward(texts, finish_reasons, answer, **kwargs):
    return [(len(text) % 5) / 4 for text in texts]


masa.trainer.solution_rewards = _length_reward

if "MASA_TEST_DIE" in os.environ:
    rank, step = map(int, os.environ["MASA_TEST_DIE"].split(":"))
    real_step = masa.trainer.Trainer.train_step

    def train_step_or_die(self):
        if self.ranks.rank == rank and self.step + 1 == step:
            os._exit(17)
        return real_step(self)

    masa.trainer.Trainer.train_step = train_step_or_die

sys.exit(main())
