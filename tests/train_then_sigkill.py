"""Test helper: train from a config and die by SIGKILL right after a given step (a node lost mid-run), through the
trainer's ``on_step_end`` callback. ``python tests/train_then_sigkill.py --config cfg.yaml --step 2``."""

import argparse
import os
import signal

from f2llm_lib.train.config import TrainConfig
from f2llm_lib.train.trainer import train

parser = argparse.ArgumentParser()
parser.add_argument("--config", required=True)
parser.add_argument("--step", type=int, required=True)
args = parser.parse_args()


def kill_after(step: int) -> None:
    if step == args.step:
        os.kill(os.getpid(), signal.SIGKILL)


train(TrainConfig.from_yaml(args.config), export=False, on_step_end=kill_after)
