"""pyproject.toml, environment.yml, the Makefile and the constraints file must describe one set of packages."""

import re
import tomllib

import yaml

from f2llm_lib.paths import REPO_ROOT


def _pyproject_pins() -> list[str]:
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    return project["dependencies"] + extras["dev"] + extras["baselines"]


def _conda_pip_pins() -> list[str]:
    env = yaml.safe_load((REPO_ROOT / "environment.yml").read_text())
    pip_sections = [item["pip"] for item in env["dependencies"] if isinstance(item, dict) and "pip" in item]
    assert len(pip_sections) == 1, "environment.yml needs exactly one pip: section"
    return [line for line in pip_sections[0] if not line.startswith("-e")]


def test_conda_and_pip_lists_agree():
    assert sorted(_pyproject_pins()) == sorted(_conda_pip_pins())


def test_every_dependency_is_pinned_exactly():
    unpinned = [dep for dep in _pyproject_pins() if "==" not in dep]
    assert not unpinned, f"unpinned dependencies: {unpinned}"


def test_torch_and_triton_pins_match_torch_cuda_build():
    pins = {re.split(r"[=;<> ]", dep)[0]: dep for dep in _pyproject_pins()}
    assert pins["torch"] == "torch==2.13.0"
    assert pins["triton"].startswith("triton==3.7.1")  # what torch 2.13.0's CUDA wheel requires


def test_constraints_agree_with_direct_pins():
    constraints = {}
    for line in (REPO_ROOT / "ci" / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, version = line.split("==")
            constraints[name.lower().replace("_", "-")] = version
    for dep in _pyproject_pins():
        name, version = dep.split(";")[0].strip().split("==")
        assert constraints.get(name.lower().replace("_", "-")) == version, f"{name}: constraints disagree"


def test_no_deps_package_is_declared_for_conda_users_too():
    makefile = (REPO_ROOT / "Makefile").read_text()
    no_deps = re.search(r"^NO_DEPS_PACKAGES := (.+)$", makefile, re.M).group(1).split()
    conda_text = (REPO_ROOT / "environment.yml").read_text()
    for package in no_deps:
        assert f"pip install --no-deps {package}" in conda_text


def test_deepspeed_extra_pin_matches_what_make_installs():
    extras = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    makefile = (REPO_ROOT / "Makefile").read_text()
    pinned = re.search(r"^DEEPSPEED := (.+)$", makefile, re.M).group(1).strip()
    assert extras["deepspeed"] == [pinned]
    assert pinned in (REPO_ROOT / "ci" / "constraints.txt").read_text().splitlines()
    assert f"pip install --no-build-isolation {pinned}" in (REPO_ROOT / "environment.yml").read_text()
