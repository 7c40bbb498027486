"""Test helper: train from a config and receive a signal right after a given step, through the trainer's
``on_step_end`` callback: SIGKILL (a node lost mid-run) or SIGTERM (a scheduler's preemption notice).
``python tests/train_then_sigkill.py --config cfg.yaml --step 2 [--signal TERM]``."""

import argparse
import os
import signal

from f2llm_lib.train.config import TrainConfig
from f2llm_lib.train.trainer import train

parser = argparse.ArgumentParser()
parser.add_argument("--config", required=True)
parser.add_argument("--step", type=int, required=True)
parser.add_argument("--signal", default="KILL", choices=["KILL", "TERM"])
args = parser.parse_args()


def kill_after(step: int) -> None:
    if step == args.step:
        os.kill(os.getpid(), getattr(signal, f"SIG{args.signal}"))


result = train(TrainConfig.from_yaml(args.config), export=False, on_step_end=kill_after)
print(f"steps {result['steps']} interrupted {result['interrupted']}")
