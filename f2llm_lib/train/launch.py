"""Launch training as a subprocess (``accelerate launch`` for several processes) and stream its progress.

A notebook must not start multi-process training in its own kernel: accelerate's ``notebook_launcher`` fails once
CUDA has been touched there. A subprocess has no such problem and is exactly what a batch job runs.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import torch


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def training_command(config_path: str | Path, num_processes: int, overrides: dict | None = None,
                     resume: bool = False) -> list[str]:
    """The command line: ``accelerate launch`` with N processes (gloo on CPU, NCCL on GPUs), or plain python."""
    args = ["-m", "f2llm_lib.train", "--config", str(config_path)] + (["--resume"] if resume else [])
    args += [f"{key}={value}" for key, value in (overrides or {}).items()]
    if num_processes <= 1:
        return [sys.executable, *args]
    precision = "bf16" if torch.cuda.is_available() else "no"
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(num_processes),
            "--num_machines", "1", "--mixed_precision", precision, "--dynamo_backend", "no",
            "--main_process_port", str(free_port()), *args]


def launch_training(config_path: str | Path, num_processes: int, overrides: dict | None = None,
                    resume: bool = False, echo: bool = True) -> list[str]:
    """Run training, printing its progress as it comes; raise with the last lines if it fails."""
    cmd = training_command(config_path, num_processes, overrides, resume)
    if echo:
        print("$", " ".join(cmd), flush=True)
    lines: list[str] = []
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1) as proc:
        for raw in proc.stdout:
            for line in raw.replace("\r", "\n").splitlines():
                if line.strip():
                    lines.append(line)
                    if echo and ("train:" in line or line.startswith(("[train]", "{", "error"))):
                        print(line, flush=True)
    if proc.returncode != 0:
        raise RuntimeError(f"training failed (exit {proc.returncode}):\n" + "\n".join(lines[-30:]))
    return lines


def new_run_dir(parent: str | Path, name: str) -> Path:
    """A new, empty folder for one training run, ``parent/<name>-<YYYYmmdd-HHMMSS>[-n]``: a notebook cell run again
    starts a new run beside the finished ones and never deletes them (a later notebook may be reading them). The
    folder is created here, so two runs started in the same second still get two folders."""
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for attempt in range(1000):
        folder = parent / (f"{name}-{stamp}" if attempt == 0 else f"{name}-{stamp}-{attempt}")
        try:
            folder.mkdir()
        except FileExistsError:
            continue
        return folder
    raise RuntimeError(f"{parent}: no free run folder name for {name}-{stamp}")
