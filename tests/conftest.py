"""Shared fixtures: the two offline backbones, loaded once per test session.

Without a GPU, Triton kernels run in its CPU interpreter; the switch must be set before triton is imported.
"""

from __future__ import annotations

import os
import sys

# pytest-xdist runs the suite in one worker per core (pyproject's addopts): each worker, and every process it
# launches, then computes on one thread, so that workers do not oversubscribe the cores they share.
if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1:
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = "1"

if "TRITON_INTERPRET" not in os.environ:
    import torch

    if not torch.cuda.is_available():
        assert "triton" not in sys.modules, "triton was imported before TRITON_INTERPRET could be set"
        os.environ["TRITON_INTERPRET"] = "1"

# This machine (and CI) has no network beyond package registries: say so to the hub client, so a spec that is not
# local fails at once with its offline error instead of after the client's retries (~45 s a call).
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402

from f2llm_lib.paths import public_data_dir  # noqa: E402

# Longest files first: pytest-xdist (--dist loadfile) hands each file whole to one worker in collection order, and
# the smoke notebooks (~4 min) or the ZeRO-2 launches (~2 min) started last would run alone at the end.
LONG_FILES = ("test_notebooks.py", "test_deepspeed.py")


def pytest_collection_modifyitems(items):
    items.sort(key=lambda item: LONG_FILES.index(item.path.name) if item.path.name in LONG_FILES else len(LONG_FILES))


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
    path = public_data_dir()
    if path is None:
        pytest.skip("F2LLM_PUBLIC_DATA is not set to a folder of the public datasets (CI sets it; tests run offline, "
                    "so the hub fallback is not tried); these tests need that real data")
    return path
