"""Typed settings from plain mappings: one loader and one checker for every configuration of the library.

Training configs, recipes and their sections, mining settings, the fused kernel's settings and notebook parameters
are dataclasses. :func:`from_mapping` builds one from a mapping (YAML, JSON, a notebook's profile), and :func:`check`
validates one built in code (its ``__post_init__`` calls it). Both give the same messages: where, which key, what it
must be, what it got, and for YAML 1.1's traps how to write the value instead.

What a dataclass declares, and what is checked from it:

- types, from the annotations: ``int`` (a bool is refused), ``float`` (an int is accepted and converted), ``bool``,
  ``str``, ``Literal[...]`` choices, ``X | None``, ``list[T]``, ``dict[K, V]``, nested dataclasses (their keys are
  checked the same way, named ``section.key``);
- ranges, as field metadata: ``field(default=1, metadata=rule(lambda v: v >= 1, "at least 1"))``;
- rules across fields: a method ``cross_checks(self)`` yielding ``(ok, key, expected)``.

Example::

    @dataclass
    class Settings:
        steps: int = field(default=10, metadata=rule(lambda v: v >= 1, "at least 1"))
        precision: Literal["no", "bf16"] = "no"

    from_mapping(Settings, {"steps": 0}, "cfg.yaml")   # SettingsError: cfg.yaml: steps must be at least 1, got 0
"""

from __future__ import annotations

import dataclasses
import difflib
import reprlib
import types
from collections.abc import Callable, Mapping
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

T = TypeVar("T")
_SHORT = reprlib.Repr()  # keyword arguments need Python 3.12; the limits are set one by one
for _name, _limit in (("maxstring", 60), ("maxother", 60), ("maxlist", 4), ("maxtuple", 4), ("maxdict", 4),
                      ("maxset", 4), ("maxlevel", 2)):
    setattr(_SHORT, _name, _limit)
# YAML 1.1 (PyYAML) reads these unquoted words as booleans.
_YAML_BOOLEANS = {True: ("yes", "true", "on", "y"), False: ("no", "false", "off", "n")}


class SettingsError(ValueError):
    """A setting is unknown, of the wrong type or out of range; the message names it and what it must be."""


@dataclasses.dataclass(frozen=True)
class Rule:
    ok: Callable[[Any], bool]
    expected: str


def rule(ok: Callable[[Any], bool], expected: str, example: str = "") -> dict:
    """Field metadata: the value must satisfy ``ok``; ``expected`` completes "KEY must be ..." in the error."""
    return {"rule": Rule(ok, expected), **({"example": example} if example else {})}


def example(text: str) -> dict:
    """Field metadata: an example of a valid value, added to a type error's message."""
    return {"example": text}


def short(value: Any) -> str:
    """A bounded repr for error messages (a huge or deeply nested value never builds its full text)."""
    return _SHORT.repr(value)


def describe(hint: Any) -> str:
    """What a type annotation accepts, in words for an error message."""
    origin, args = get_origin(hint), get_args(hint)
    if origin is Literal:
        choices = [str(a) for a in args]
        return " or ".join(choices) if len(choices) <= 2 else "one of " + ", ".join(choices)
    if origin in (Union, types.UnionType):
        parts = [describe(a) for a in args if a is not type(None)]
        return " or ".join(parts) + (" (or null)" if type(None) in args else "")
    if origin is list:
        return f"a list of {describe(args[0])}" if args else "a list"
    if origin is dict:
        return "a mapping"
    if dataclasses.is_dataclass(hint):
        return f"a mapping of {hint.__name__} settings"
    if hint is float:
        return "a number"
    return getattr(hint, "__name__", str(hint))


class _Mismatch(Exception):
    """What was expected; for an element of a list or mapping, also its own path and value."""

    def __init__(self, expected: str, path: str = "", value: Any = None) -> None:
        super().__init__(expected)
        self.expected, self.path, self.value = expected, path, value


def _element(value: Any, hint: Any, path: str, where: str, error: type[Exception]) -> Any:
    try:
        return _conform(value, hint, path, where, error)
    except _Mismatch as mismatch:
        if mismatch.path:
            raise
        raise _Mismatch(mismatch.expected, path, value) from None


def _conform(value: Any, hint: Any, path: str, where: str, error: type[Exception]) -> Any:
    """``value`` as ``hint`` asks (an int for a float becomes a float); raises _Mismatch naming what was expected."""
    origin, args = get_origin(hint), get_args(hint)
    if hint is Any:
        return value
    if origin is Literal:
        if any(value == choice and type(value) is type(choice) for choice in args):
            return value
        raise _Mismatch(describe(hint))
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for option in (a for a in args if a is not type(None)):
            try:
                return _conform(value, option, path, where, error)
            except _Mismatch:
                continue
        raise _Mismatch(describe(hint))
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise _Mismatch("bool")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise _Mismatch("int")
    if hint is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        raise _Mismatch("a number")
    if hint is str:
        if isinstance(value, str):
            return value
        raise _Mismatch("str")
    if origin is list:
        if not isinstance(value, list):
            raise _Mismatch(describe(hint))
        return [_element(item, args[0], f"{path}[{index}]", where, error) if args else item
                for index, item in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise _Mismatch(describe(hint))
        key_hint, value_hint = args or (Any, Any)
        return {_element(k, key_hint, f"{path} key {short(k)}", where, error):
                _element(v, value_hint, f"{path}.{k}", where, error) for k, v in value.items()}
    if dataclasses.is_dataclass(hint):
        if isinstance(value, hint):
            return value
        if isinstance(value, Mapping):
            return from_mapping(hint, value, where, error, prefix=f"{path}.")
        raise _Mismatch(describe(hint))
    if isinstance(hint, type):
        if isinstance(value, hint):
            return value
        raise _Mismatch(describe(hint))
    return value


def _trap(value: Any, expected: str) -> str:
    """How to write a value YAML 1.1 read as another type than the one meant."""
    if isinstance(value, str) and expected in ("a number", "int"):
        try:
            number = float(value)
        except ValueError:
            return ""
        if expected == "a number" and "e" in value.lower() and "." not in value.split("e")[0].split("E")[0]:
            fixed = f"{number:.1e}".replace("e-0", "e-").replace("e+0", "e+")
            return f" (YAML 1.1 reads {value} as text, an exponent needs a decimal point: write {fixed})"
        return f" (a quoted number is text: write {value} without quotes)"
    if isinstance(value, bool) and ("str" in expected or " or " in expected or "one of" in expected):
        words = "/".join(_YAML_BOOLEANS[value])
        return (f" (YAML reads an unquoted {words} as the boolean {value}: quote the word, e.g. "
                f"'{_YAML_BOOLEANS[value][0]}')")
    return ""


def _type_error(where: str, path: str, value: Any, expected: str, metadata: Mapping, error: type[Exception]):
    example = f" ({metadata['example']})" if metadata.get("example") else ""
    return error(f"{where}: {path} must be {expected}, got {type(value).__name__} {short(value)}"
                 f"{_trap(value, expected)}{example}")


def _checked_fields(cls: type, values: Mapping[str, Any], where: str, prefix: str, error: type[Exception],
                    type_error: type[Exception] | None) -> dict[str, Any]:
    hints = get_type_hints(cls)
    out = {}
    for spec in dataclasses.fields(cls):
        if spec.name not in values:
            continue
        path = f"{prefix}{spec.name}"
        value = values[spec.name]
        try:
            value = _conform(value, hints[spec.name], path, where, error)
        except _Mismatch as mismatch:
            # a value outside a Literal's choices is a wrong value, not a wrong type
            kind = error if get_origin(hints[spec.name]) is Literal else (type_error or error)
            if mismatch.path:  # an element of a list or mapping: name it, with its own value
                path, value = mismatch.path, mismatch.value
            raise _type_error(where, path, value, mismatch.expected, spec.metadata, kind) from None
        check_rule = spec.metadata.get("rule")
        if check_rule is not None and value is not None and not check_rule.ok(value):
            raise error(f"{where}: {path} must be {check_rule.expected}, got {short(value)}")
        out[spec.name] = value
    return out


def _cross_checks(obj: Any, where: str, prefix: str, error: type[Exception]) -> None:
    for ok, key, expected in getattr(obj, "cross_checks", lambda: ())():
        if not ok:
            got = ", ".join(short(getattr(obj, k)) for k in key.split("/"))
            raise error(f"{where}: {prefix}{key} must be {expected}, got {got}")


def from_mapping(cls: type[T], data: Any, where: str, error: type[Exception] = SettingsError, *,
                 prefix: str = "", noun: str = "key") -> T:
    """Build dataclass ``cls`` from ``data``: unknown, missing, mistyped and out-of-range keys raise ``error`` naming
    ``where`` (a file, or a notebook), the key (``prefix`` names the section) and the fix."""
    if not isinstance(data, Mapping):
        section = prefix.rstrip(".") or "the settings"
        raise error(f"{where}: {section} must be a mapping of keys to values, got {type(data).__name__} {short(data)}")
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    aliases = getattr(cls, "KEY_ALIASES", {})  # what other trainers call a setting
    for key in data:
        if key not in names:
            close = [aliases[key]] if key in aliases else difflib.get_close_matches(str(key), names, n=1,
                                                                                      cutoff=0.75)
            hint = f" (did you mean {prefix}{close[0]}?)" if close else ""
            raise error(f"{where}: unknown {noun} {short(f'{prefix}{key}')}{hint}. Known {noun}s: "
                        f"{', '.join(names)}")
    missing = [f.name for f in dataclasses.fields(cls) if f.init and f.name not in data
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise error(f"{where}: missing required {noun} {prefix}{missing[0]}")
    values = _checked_fields(cls, data, where, prefix, error, None)
    obj = cls(**values)
    _cross_checks(obj, where, prefix, error)
    return obj


def check(obj: Any, where: str | None = None, error: type[Exception] = SettingsError,
          type_error: type[Exception] | None = None) -> None:
    """Validate a dataclass built in code with the same rules as :func:`from_mapping` (call it from
    ``__post_init__``); ``type_error`` raises type mismatches as another class (e.g. ``TypeError``)."""
    where = where or type(obj).__name__
    _checked_fields(type(obj), {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}, where, "", error,
                    type_error)
    _cross_checks(obj, where, "", error)


def check_choice(value: Any, hint: Any, name: str, error: type[Exception] = SettingsError) -> Any:
    """``value`` if it is one of ``Literal`` ``hint``'s choices, else ``error`` naming ``name`` and the choices."""
    if value in get_args(hint) and isinstance(value, str):
        return value
    raise error(f"{name} must be {describe(hint)}, got {short(value)}{_trap(value, describe(hint))}")


MAX_YAML_BYTES = 256 * 1024  # a recipe or config is a page of keys; anything far larger is a mistake or an attack


def load_yaml(text: str, where: str, error: type[Exception] = SettingsError) -> Any:
    """Plain YAML for settings, parsed with bounds: at most :data:`MAX_YAML_BYTES`, no aliases (``*name``: a few
    hundred bytes of nested aliases expand to billions of items), no duplicate keys (YAML lets the last one win
    without a word). Tags that could build objects are refused as by ``yaml.safe_load``."""
    import yaml

    if len(text.encode("utf-8")) > MAX_YAML_BYTES:
        raise error(f"{where}: {len(text.encode('utf-8')):,} bytes; settings files are limited to "
                    f"{MAX_YAML_BYTES:,} (a recipe or config is a page of keys)")
    try:
        for event in yaml.parse(text, Loader=yaml.SafeLoader):  # events only: nothing is expanded yet
            if isinstance(event, yaml.AliasEvent):
                raise error(f"{where}:{event.start_mark.line + 1}: an alias (*{short(event.anchor)}); settings files "
                            "take no anchors or aliases (nested aliases can expand without bound): write the values "
                            "out")
        return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise error(f"{where}{line}: not plain YAML: {short(str(exc).splitlines()[0])}; use plain keys and values "
                    "(no tags)") from exc
    except _DuplicateKey as exc:
        raise error(f"{where}:{exc.line}: the key {short(exc.key)} appears twice; YAML would keep the last one "
                    "without a word. Keep one") from None


class _DuplicateKey(Exception):
    def __init__(self, key: Any, line: int) -> None:
        super().__init__(key)
        self.key, self.line = key, line


def _unique_key_loader():
    import yaml

    class UniqueKeyLoader(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            seen = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=deep)
                if isinstance(key, str | int | float | bool) and key in seen:
                    raise _DuplicateKey(key, key_node.start_mark.line + 1)
                seen.add(key)
            return super().construct_mapping(node, deep=deep)

    return UniqueKeyLoader


_UniqueKeyLoader = _unique_key_loader()
