"""pyproject.toml (compatible ranges), ci/constraints.txt (the exact lock make installs), environment.yml (the lock's
pins of the direct dependencies) and the Makefile must describe one set of packages."""

import re
import tomllib

import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from f2llm_lib.paths import REPO_ROOT


def _pyproject_requirements() -> list[str]:
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    return project["dependencies"] + extras["dev"] + extras["baselines"]


def _lock() -> dict[str, str]:
    """ci/constraints.txt: the exact versions make installs, by normalised name."""
    lock = {}
    for line in (REPO_ROOT / "ci" / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, version = line.split("==")
            lock[canonicalize_name(name)] = version
    return lock


def _conda_pip_pins() -> list[str]:
    env = yaml.safe_load((REPO_ROOT / "environment.yml").read_text())
    pip_sections = [item["pip"] for item in env["dependencies"] if isinstance(item, dict) and "pip" in item]
    assert len(pip_sections) == 1, "environment.yml needs exactly one pip: section"
    return [line for line in pip_sections[0] if not line.startswith("-e")]


def test_the_runtime_dependencies_are_compatible_ranges():
    """Ranges, not pins: `pip install -e .` beside a researcher's own (CUDA) torch keeps it."""
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    for dep in project["dependencies"]:
        requirement = Requirement(dep)
        operators = {spec.operator for spec in requirement.specifier}
        assert operators == {">=", "<"}, f"{dep}: a lower bound and an upper bound, not an exact pin"
    torch = next(Requirement(d) for d in project["dependencies"] if d.startswith("torch"))
    assert "2.12.0" in torch.specifier and "2.13.0" in torch.specifier and "3.0" not in torch.specifier


def test_the_lock_satisfies_every_declared_range():
    lock = _lock()
    for dep in _pyproject_requirements():
        requirement = Requirement(dep)
        version = lock.get(canonicalize_name(requirement.name))
        assert version is not None, f"{requirement.name} is declared but not in ci/constraints.txt (make lock)"
        assert requirement.specifier.contains(version, prereleases=True), (
            f"ci/constraints.txt has {requirement.name}=={version}, outside pyproject's {requirement.specifier}")


def test_conda_pins_the_lock_of_every_direct_dependency():
    lock, conda = _lock(), {}
    for line in _conda_pip_pins():
        requirement = Requirement(line)
        (spec,) = requirement.specifier
        assert spec.operator == "==", f"environment.yml pins exactly (the lock): {line}"
        conda[canonicalize_name(requirement.name)] = spec.version
    declared = {canonicalize_name(Requirement(dep).name) for dep in _pyproject_requirements()}
    assert set(conda) == declared, "environment.yml lists exactly pyproject's direct dependencies"
    assert all(lock[name] == version for name, version in conda.items()), "environment.yml agrees with the lock"


def test_torch_and_triton_locked_as_torch_cuda_build_needs():
    lock = _lock()
    assert lock["torch"] == "2.13.0"
    assert lock["triton"] == "3.7.1"  # what torch 2.13.0's CUDA wheel requires


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
