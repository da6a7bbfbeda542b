"""Run by tests/test_distributed.py under torchrun (or plainly): train the tiny preset with overrides.

usage: dist_run.py RUN_DIR STEPS STOP_AT STRATEGY [DIE_RANK DIE_STEP]
A DIE_RANK process exits abruptly after DIE_STEP steps, as a crashed worker would.
"""

import os
import sys

import torch

torch.set_num_threads(1)

from tarflow.presets import get_preset  # noqa: E402
from tarflow.train import trainer  # noqa: E402


def main() -> int:
    run_dir, steps, stop_at, strategy = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    config = get_preset("tiny")
    config.train.steps = steps
    config.train.batch_size = 32
    config.train.checkpoint_every = 0
    config.train.eval_every = 0
    config.train.sample_every = 0
    config.train.num_samples = 10
    config.train.parallel = strategy
    if len(sys.argv) > 5 and os.environ.get("RANK") == sys.argv[5]:
        die_step, real_batch = int(sys.argv[6]), trainer.batch

        def batch(data, step, *args):
            if step == die_step:
                os._exit(3)
            return real_batch(data, step, *args)

        trainer.batch = batch
    trainer.train(config, run_dir, progress=False, stop_at=stop_at or None)
    return 0


if __name__ == "__main__":
    from tarflow.cli import run_reporting_errors

    sys.exit(run_reporting_errors(main))
