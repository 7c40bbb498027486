"""Shared fixtures: the two offline backbones, loaded once per test session.

Without a GPU, Triton kernels run in its CPU interpreter; the switch must be set before triton is imported.
"""

from __future__ import annotations

import os
import sys

if "TRITON_INTERPRET" not in os.environ:
    import torch

    if not torch.cuda.is_available():
        assert "triton" not in sys.modules, "triton was imported before TRITON_INTERPRET could be set"
        os.environ["TRITON_INTERPRET"] = "1"

# This machine (and CI) has no network beyond package registries: say so to the hub client, so a spec that is not
# local fails at once with its offline error instead of after the client's retries (~45 s a call).
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402

from f2llm_lib.paths import shared_data_dir  # noqa: E402


@pytest.fixture(scope="session")
def tiny():
    from f2llm_lib.embedder.backbones import load_backbone

    return load_backbone("tiny-qwen3", seed=0)


@pytest.fixture(scope="session")
def smollm2():
    from f2llm_lib.embedder.backbones import load_backbone

    return load_backbone("smollm2-135m")


@pytest.fixture(scope="session")
def shared_data():
    path = shared_data_dir()
    if path is None:
        pytest.skip("../shared/data is absent (CI always has it); these tests need its real public data")
    return path
