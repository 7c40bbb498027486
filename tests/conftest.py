"""Shared fixtures: the two offline backbones, loaded once per test session."""

from __future__ import annotations

import pytest

from f2llm_lib.paths import shared_data_dir


@pytest.fixture(scope="session")
def tiny():
    from f2llm_lib.backbones import load_backbone

    return load_backbone("tiny-qwen3", seed=0)


@pytest.fixture(scope="session")
def smollm2():
    from f2llm_lib.backbones import load_backbone

    return load_backbone("smollm2-135m")


@pytest.fixture(scope="session")
def shared_data():
    path = shared_data_dir()
    if path is None:
        pytest.skip("../shared/data is absent (CI always has it); these tests need its real public data")
    return path
