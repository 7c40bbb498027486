"""One typed loader for every configuration: unknown keys, types, choices, ranges, nesting, YAML 1.1's traps, and
bounded messages, the same for training configs, recipes, mining, kernel settings and notebook parameters."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import pytest
import yaml

from f2llm_lib.typed import SettingsError, check, from_mapping, rule


@dataclass
class Inner:
    size: int = field(default=2, metadata=rule(lambda v: v >= 1, "at least 1"))


@dataclass
class Outer:
    steps: int = field(default=10, metadata=rule(lambda v: v >= 1, "at least 1"))
    rate: float = 0.1
    mode: Literal["fast", "exact"] = "fast"
    label: str | None = None
    names: list[str] = field(default_factory=list)
    inner: Inner = field(default_factory=Inner)
    low: float = 0.0
    high: float = 1.0

    def cross_checks(self):
        yield self.low <= self.high, "low", f"at most high ({self.high})"


@pytest.mark.parametrize(("data", "message"), [
    ({"stesp": 3}, r"cfg: unknown key 'stesp' \(did you mean steps\?\)\. Known keys: steps, rate"),
    ({"steps": "3"}, r"cfg: steps must be int, got str '3' \(a quoted number is text: write 3 without quotes\)"),
    ({"steps": True}, r"cfg: steps must be int, got bool True"),
    ({"steps": 0}, r"cfg: steps must be at least 1, got 0"),
    ({"rate": "2e-5"}, r"rate must be a number, got str '2e-5' \(YAML 1\.1 reads 2e-5 as text.*write 2\.0e-5\)"),
    ({"mode": "slow"}, r"cfg: mode must be fast or exact, got str 'slow'"),
    ({"mode": False}, r"mode must be fast or exact, got bool False \(YAML reads an unquoted no/false/off/n"),
    ({"label": 3}, r"label must be str \(or null\), got int 3"),
    ({"names": ["a", 2]}, r"cfg: names\[1\] must be str, got int 2"),
    ({"inner": {"size": 0}}, r"cfg: inner\.size must be at least 1, got 0"),
    ({"inner": {"sise": 1}}, r"cfg: unknown key 'inner\.sise' \(did you mean inner\.size\?\)"),
    ({"inner": 5}, r"cfg: inner must be a mapping of Inner settings, got int 5"),
    ({"low": 2.0}, r"cfg: low must be at most high \(1\.0\), got 2\.0"),
])
def test_each_mistake_is_named_with_its_fix(data, message):
    with pytest.raises(SettingsError, match=message):
        from_mapping(Outer, data, "cfg")


def test_good_values_are_converted_and_defaults_kept():
    settings = from_mapping(Outer, {"rate": 1, "inner": {"size": 4}, "label": None}, "cfg")
    assert settings.rate == 1.0 and isinstance(settings.rate, float)
    assert settings.inner == Inner(4) and settings.steps == 10


def test_a_yaml_bomb_never_builds_its_full_repr():
    """A value of a billion items (nested aliases) reaches the message only as a bounded repr."""
    bomb = yaml.safe_load("a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
                          "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: [*c, *c, *c, *c, *c, *c, *c, *c, *c]\n")
    with pytest.raises(SettingsError) as raised:
        from_mapping(Outer, {"label": bomb["d"]}, "cfg")
    assert len(str(raised.value)) < 300


def test_objects_built_in_code_are_checked_the_same_way():
    with pytest.raises(SettingsError, match=r"Inner: size must be at least 1, got 0"):
        check(Inner(0))
    with pytest.raises(TypeError, match=r"Inner: size must be int, got str"):
        check(Inner("2"), type_error=TypeError)


def test_every_configuration_uses_the_one_loader(tmp_path):
    """The same words for the same mistake, whichever configuration it is made in."""
    from f2llm_lib.data.mining import MiningConfig
    from f2llm_lib.data.recipes import load_recipe
    from f2llm_lib.data.schema import DataError
    from f2llm_lib.losses.kernel_settings import KernelSettings
    from f2llm_lib.tooling.notebook_runner import NotebookParameterError, validate_parameters
    from f2llm_lib.train.config import ConfigError, TrainConfig

    with pytest.raises(ConfigError, match=r"cfg\.yaml: warmup_steps must be int, got str '5' \(a quoted number"):
        TrainConfig.from_dict({"warmup_steps": "5"}, "cfg.yaml")
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: r\nsource: {kind: pycode}\nbuild: {kind: pycode}\ntasks: [retrieval]\n"
                      "mining: {num_negatives: '5'}\n")
    with pytest.raises(DataError, match=r"r\.yaml: mining\.num_negatives must be int, got str '5' \(a quoted number"):
        load_recipe(recipe)
    with pytest.raises(DataError, match=r"mining: num_negatives must be at least 1, got 0"):
        MiningConfig(num_negatives=0)
    with pytest.raises(ValueError, match=r"KernelSettings: target_programs must be a positive int, got 0"):
        KernelSettings(target_programs=0)
    from pathlib import Path

    notebook = Path(__file__).resolve().parent.parent / "notebooks" / "00_foundation_to_feature.ipynb"
    with pytest.raises(NotebookParameterError, match=r"00_foundation_to_feature\.ipynb \(from p\.yaml\): .* must be "
                       r"str, got int 5"):
        validate_parameters(notebook, {"BACKBONE": 5}, source="p.yaml")
