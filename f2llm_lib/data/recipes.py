"""Declarative recipes (``data_recipes/*.yaml``) that turn a source dataset into F2LLM tuples.

A recipe names its source (a hub dataset, a local file, or ``pycode``), maps source columns to roles, says how
positives and negatives are built, and caps the sample count. Every key is checked: an unknown or misspelt key
is an error naming the file and the key.
"""

from __future__ import annotations

import hashlib
import os
import random
import re
from collections import defaultdict
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from ..paths import PUBLIC_DATA_ENV, REPO_ROOT, public_data_dir
from .mining import MiningConfig
from .readers import read_hub, read_local
from .schema import TASK_TYPES, DataError, TrainingTuple, check_text

RECIPE_DIR = REPO_ROOT / "data_recipes"
BUILDS = {  # build kind -> (task types it makes, source fields it needs)
    "tuples": (TASK_TYPES, ("query", "positive")),
    "pairs": (("retrieval",), ("s1", "s2")),
    "label_verbalisation": (("classification",), ("text", "label")),
    "same_cluster": (("clustering",), ("text", "label")),
    "pycode": (TASK_TYPES, ()),
}
TOP_KEYS = {"name", "description", "task_type", "tasks", "instruction", "instructions", "source", "fields", "build",
            "mining", "max_samples", "seed", "decontaminate_against"}
SOURCE_KEYS = {"kind", "path", "format", "hub_id", "config", "split", "packages", "data_files", "hub_fallback"}
HUB_FALLBACK_KEYS = {"hub_id", "config", "split", "fields"}
PUBLIC_DATA = "${PUBLIC_DATA}"
BUILD_KEYS = {"kind", "score_min", "label_names", "num_negatives"}
# A recipe's mining section: the scorer, then exactly MiningConfig's fields, typed from their defaults (derived, so
# the two cannot drift apart).
MINING_TYPES = {"scorer": str, **{f.name: (int, float) if isinstance(f.default, float) else type(f.default)
                                  for f in fields(MiningConfig)}}
MINING_KEYS = set(MINING_TYPES)
BUILD_TYPES = {"kind": str, "score_min": (int, float), "label_names": dict, "num_negatives": int}
SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")


def _type_names(kind) -> str:
    return kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)


@dataclass
class Recipe:
    path: Path
    name: str
    source: dict[str, Any]
    build: dict[str, Any]
    task_type: str | None = None
    tasks: list[str] = field(default_factory=list)
    instruction: str = ""
    instructions: dict[str, str] = field(default_factory=dict)
    fields: dict[str, str] = field(default_factory=dict)
    mining: dict[str, Any] = field(default_factory=dict)
    max_samples: int | None = None
    seed: int = 0
    decontaminate_against: list[str] = field(default_factory=list)
    description: str = ""

    @property
    def digest(self) -> str:
        """Hash of the recipe file's bytes, recorded in the manifest of what it produced."""
        return hashlib.sha1(self.path.read_bytes()).hexdigest()[:12]


def _unknown(keys, allowed, where: str) -> None:
    extra = sorted(set(keys) - allowed)
    if extra:
        raise DataError(f"{where}: unknown key(s) {extra}; allowed: {sorted(allowed)}")


def _typed(mapping: dict, key: str, kind: type | tuple, where: str, required: bool = False):
    if key not in mapping:
        if required:
            raise DataError(f"{where}: missing required key '{key}'")
        return None
    value = mapping[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise DataError(f"{where}: key '{key}' must be {names}, got {type(value).__name__} {value!r:.60}")
    return value


def expand_mix(spec: str | Path, seen: tuple = ()) -> list[Recipe]:
    """A recipe, or the recipes a mix recipe lists (``name: ...`` and ``mix: [recipe, ...]``, nothing else)."""
    path = _recipe_path(spec)
    data = _read_yaml(path)
    if not isinstance(data, dict) or "mix" not in data:
        return [load_recipe(path)]
    _unknown(data, {"name", "description", "mix"}, str(path))
    members = data["mix"]
    if not isinstance(members, list) or not members or not all(isinstance(m, str) for m in members):
        raise DataError(f"{path}: mix must be a non-empty list of recipe names or paths")
    if str(path) in seen:
        raise DataError(f"{path}: a mix that includes itself ({' -> '.join(seen)})")
    return [r for member in members for r in expand_mix(member, (*seen, str(path)))]


def _recipe_path(path: str | Path) -> Path:
    path = Path(path)
    if not path.exists() and (RECIPE_DIR / f"{path}.yaml").exists():
        path = RECIPE_DIR / f"{path}.yaml"
    return path


def _read_yaml(path: Path):
    where = str(path)
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        known = ", ".join(sorted(p.stem for p in RECIPE_DIR.glob("*.yaml")))
        raise DataError(f"{where}: recipe not found; shipped recipes: {known}") from exc
    except yaml.YAMLError as exc:
        raise DataError(f"{where}: malformed YAML: {exc}") from exc


def load_recipe(path: str | Path) -> Recipe:
    """Parse and check one recipe file (``yaml.safe_load``; no tags, no code)."""
    path = _recipe_path(path)
    where = str(path)
    data = _read_yaml(path)
    if isinstance(data, dict) and "mix" in data:
        raise DataError(f"{where}: a mix recipe; curate it with the pipeline (run_recipe / the command line), "
                        "which reads its members")
    if not isinstance(data, dict):
        raise DataError(f"{where}: a recipe must be a mapping of keys to values")
    _unknown(data, TOP_KEYS, where)
    name = _typed(data, "name", str, where, required=True)
    source = _typed(data, "source", dict, where, required=True)
    build = _typed(data, "build", dict, where, required=True)
    _unknown(source, SOURCE_KEYS, f"{where}: source")
    _unknown(build, BUILD_KEYS, f"{where}: build")
    mining = _typed(data, "mining", dict, where) or {}
    _unknown(mining, MINING_KEYS, f"{where}: mining")
    kind = _typed(build, "kind", str, f"{where}: build", required=True)
    if kind not in BUILDS:
        raise DataError(f"{where}: build.kind {kind!r} is not one of {sorted(BUILDS)}")
    source_kind = _typed(source, "kind", str, f"{where}: source", required=True)
    if source_kind not in ("local", "hub", "pycode"):
        raise DataError(f"{where}: source.kind {source_kind!r} must be local, hub or pycode")
    task_type = _typed(data, "task_type", str, where)
    tasks = _typed(data, "tasks", list, where) or []
    if kind == "pycode":
        if not tasks or any(t not in TASK_TYPES for t in tasks):
            raise DataError(f"{where}: a pycode recipe lists 'tasks' among {TASK_TYPES}")
    elif task_type not in BUILDS[kind][0]:
        raise DataError(f"{where}: task_type {task_type!r} does not fit build.kind {kind!r} "
                        f"(allowed: {BUILDS[kind][0]})")
    fields = _typed(data, "fields", dict, where) or {}
    missing = [role for role in BUILDS[kind][1] if role not in fields]
    if missing:
        raise DataError(f"{where}: fields must map {missing} to source columns for build.kind {kind!r}")
    max_samples = _typed(data, "max_samples", int, where)
    if max_samples is not None and max_samples < 1:
        raise DataError(f"{where}: max_samples must be positive, got {max_samples}")
    if not SAFE_NAME.match(name):
        raise DataError(f"{where}: name {name!r} becomes a folder and file name; use letters, digits, '_', '-' and "
                        "'.' (not starting with '.'), e.g. my_dataset")
    for key, value in mining.items():  # typed here, before any data is read
        expected = MINING_TYPES[key]
        if not isinstance(value, expected) or isinstance(value, bool) and expected is not bool:
            raise DataError(f"{where}: mining.{key} must be {_type_names(expected)}, got "
                            f"{type(value).__name__} {value!r:.60}")
    for key, expected in BUILD_TYPES.items():
        if key in build and (not isinstance(build[key], expected) or isinstance(build[key], bool)):
            raise DataError(f"{where}: build.{key} must be {_type_names(expected)}, got "
                            f"{type(build[key]).__name__} {build[key]!r:.60}")
    return Recipe(path=path, name=name, source=source, build=build, task_type=task_type, tasks=tasks,
                  instruction=_typed(data, "instruction", str, where) or "",
                  instructions=_typed(data, "instructions", dict, where) or {}, fields=fields, mining=mining,
                  max_samples=max_samples, seed=_typed(data, "seed", int, where) or 0,
                  decontaminate_against=_typed(data, "decontaminate_against", list, where) or [],
                  description=_typed(data, "description", str, where) or "")


def resolve_path(raw: str, recipe: Recipe | None) -> Path:
    """``${PUBLIC_DATA}`` expands to the ``F2LLM_PUBLIC_DATA`` folder; relative paths are relative to the
    repository root."""
    if PUBLIC_DATA in raw:
        folder = public_data_dir()
        if folder is None:
            where = f"{recipe.path}: " if recipe is not None else ""
            raise DataError(f"{where}{raw} needs {PUBLIC_DATA_ENV} set to a folder of the public datasets (or a "
                            "recipe with a hub_fallback and network access)")
        raw = raw.replace(PUBLIC_DATA, str(folder))
    path = Path(os.path.expanduser(raw))
    return path if path.is_absolute() else REPO_ROOT / path


def read_records(recipe: Recipe) -> list[tuple[str, dict]]:
    source = recipe.source
    if source["kind"] == "local" and PUBLIC_DATA in source.get("path", "") and public_data_dir() is None \
            and source.get("hub_fallback"):
        return read_hub_fallback(recipe)
    if source["kind"] == "local":
        if "path" not in source:
            raise DataError(f"{recipe.path}: a local source needs source.path")
        path = resolve_path(source["path"], recipe)
        records = list(read_local(path, source.get("format")))
        if not records:
            raise DataError(f"{path}: no records (an empty file); the recipe {recipe.path} needs a source with data")
        return records
    if "hub_id" not in source:
        raise DataError(f"{recipe.path}: a hub source needs source.hub_id")
    return list(read_hub(source["hub_id"], source.get("config"), source.get("split", "train"),
                         source.get("data_files")))


def read_hub_fallback(recipe: Recipe) -> list[tuple[str, dict]]:
    """The same public dataset from the hub when no local copy is configured: its records with the hub's columns
    renamed to the ones the recipe's ``fields`` name (``hub_fallback.fields`` maps each role to a hub column)."""
    fallback = recipe.source["hub_fallback"]
    where = f"{recipe.path}: source.hub_fallback"
    if not isinstance(fallback, dict):
        raise DataError(f"{where} must be a mapping with hub_id, split and fields")
    _unknown(fallback, HUB_FALLBACK_KEYS, where)
    hub_fields = _typed(fallback, "fields", dict, where, required=True)
    missing = sorted(set(recipe.fields) - set(hub_fields))
    if missing:
        raise DataError(f"{where}: fields must map the recipe's roles {missing} to hub columns too")
    hub_id, split = _typed(fallback, "hub_id", str, where, required=True), fallback.get("split", "train")
    print(f"[recipe] {recipe.name}: {PUBLIC_DATA_ENV} is not set; reading {hub_id} ({split} split) from the hub",
          flush=True)
    return [(row_where, {recipe.fields[role]: record[hub_fields[role]] for role in recipe.fields})
            for row_where, record in read_hub(hub_id, fallback.get("config"), split)]


def _column(record: dict, column: str, where: str) -> Any:
    if column not in record:
        raise DataError(f"{where}: missing column '{column}' (present: {sorted(record)}); fix the recipe's fields")
    return record[column]


def _cap(items: list, recipe: Recipe, rng: random.Random) -> list:
    if recipe.max_samples is not None and len(items) > recipe.max_samples:
        items = rng.sample(items, recipe.max_samples)
    return items


def build_examples(recipe: Recipe, records: list[tuple[str, dict]]) -> tuple[list[TrainingTuple], dict[str, Any]]:
    """Tuples without mined negatives yet, plus what mining needs (candidate corpus and groups)."""
    rng = random.Random(recipe.seed)
    kind, f = recipe.build["kind"], recipe.fields
    if kind == "tuples":  # already (query, positive, negative_*) as in the released F2LLM data
        tuples = []
        for where, record in records:
            negatives = [check_text(record[c], where, c) for c in sorted(record, key=_negative_order)
                         if c.startswith("negative_") and record[c]]
            tuples.append(TrainingTuple(recipe.name, recipe.task_type, recipe.instruction,
                                        check_text(_column(record, f["query"], where), where, f["query"]),
                                        check_text(_column(record, f["positive"], where), where, f["positive"]),
                                        negatives))
        return _cap(tuples, recipe, rng), {"mine": False}
    if kind == "pairs":
        score_min = float(recipe.build.get("score_min", 0.0))
        tuples, corpus, seen = [], [], set()
        for where, record in records:
            s1 = check_text(_column(record, f["s1"], where), where, f["s1"])
            s2 = check_text(_column(record, f["s2"], where), where, f["s2"])
            for text in (s1, s2):
                if text not in seen:
                    seen.add(text)
                    corpus.append(text)
            if "score" in f:
                raw = _column(record, f["score"], where)
                try:
                    score = float(raw)
                except (TypeError, ValueError) as exc:
                    raise DataError(f"{where}: field '{f['score']}' must be a number, got {raw!r}") from exc
                if score < score_min:
                    continue
            if s1 != s2:
                tuples.append(TrainingTuple(recipe.name, "retrieval", recipe.instruction, s1, s2))
        return _cap(tuples, recipe, rng), {"mine": True, "corpus": corpus}
    texts_by_label: dict[str, list[str]] = defaultdict(list)
    for where, record in records:
        text = check_text(_column(record, f["text"], where), where, f["text"])
        label = _column(record, f["label"], where)
        if not isinstance(label, str | int):
            raise DataError(f"{where}: label must be text or an integer, got {type(label).__name__}")
        texts_by_label[str(label)].append(text)
    labels = sorted(texts_by_label)
    if len(labels) < 2:
        raise DataError(f"{recipe.path}: {kind} needs at least two labels, found {labels}")
    names = recipe.build.get("label_names") or {}
    verbal = {label: str(names.get(label, label)).replace("_", " ") for label in labels}
    tuples = []
    if kind == "label_verbalisation":
        for label in labels:
            for text in texts_by_label[label]:
                other = rng.choice([x for x in labels if x != label])
                tuples.append(TrainingTuple(recipe.name, "classification", recipe.instruction, text, verbal[label],
                                            [verbal[other]]))
        return _cap(tuples, recipe, rng), {"mine": False}
    corpus, groups = [], []
    for label in labels:  # same_cluster: another text of the same cluster is the positive
        members = texts_by_label[label]
        for text in members:
            corpus.append(text)
            groups.append(label)
        if len(members) < 2:
            continue
        for index, text in enumerate(members):
            partner = members[(index + 1 + rng.randrange(len(members) - 1)) % len(members)]
            if partner != text:
                tuples.append(TrainingTuple(recipe.name, "clustering", recipe.instruction, text, partner))
    tuples = _cap(tuples, recipe, rng)
    group_of = dict(zip(corpus, groups, strict=True))
    return tuples, {"mine": True, "corpus": corpus, "corpus_groups": groups,
                    "query_groups": [group_of[t.query] for t in tuples]}


# F2LLM's classification and clustering sources (docs/F2LLM_REFERENCE.md, Data); every other file of the
# released mix is a retrieval source.
CLASSIFICATION_SOURCES = ("amazon_counterfactual", "amazon_polarity", "imdb", "toxic", "cola")
CLUSTERING_SOURCES = ("banking77", "emotion", "mtop", "massive", "tweet", "arxiv", "biorxiv", "medrxiv", "reddit",
                      "stackexchange_clustering", "twentynewsgroups", "20newsgroups")


def infer_task_type(file_name: str) -> str:
    """Task type of one file of the released F2LLM mix, from its name."""
    stem = Path(file_name).stem.lower().replace("-", "_")
    if any(key in stem for key in CLASSIFICATION_SOURCES):
        return "classification"
    if any(key in stem for key in CLUSTERING_SOURCES):
        return "clustering"
    return "retrieval"


def f2llm_mix_files(recipe: Recipe) -> list[str]:
    """The parquet files of the released mix: each becomes one dataset, capped separately. From the hub (needs
    network), or from a local folder holding a downloaded copy (``source: {kind: local, path: DIR,
    data_files: all}``)."""
    if recipe.source["kind"] == "local":
        folder = resolve_path(recipe.source.get("path", ""), recipe)
        if not folder.is_dir():
            raise DataError(f"{recipe.path}: source.path {folder} must be a folder of the released parquet files")
        files = sorted(str(p) for p in folder.glob("*.parquet"))
        where = str(folder)
    else:
        from huggingface_hub import list_repo_files

        files = sorted(f for f in list_repo_files(recipe.source["hub_id"], repo_type="dataset")
                       if f.endswith(".parquet"))
        where = recipe.source["hub_id"]
    if not files:
        raise DataError(f"{recipe.path}: no parquet files in {where}")
    return files


def _negative_order(column: str) -> int:
    suffix = column.removeprefix("negative_")
    return int(suffix) if suffix.isdigit() else 10**6


def build_pycode_examples(recipe: Recipe, split: str = "train") -> list[tuple[list[TrainingTuple], dict[str, Any]]]:
    """pycode as up to three datasets: retrieval (summary -> code), clustering (docstring -> docstring of the same
    module) and classification (docstring -> its package)."""
    from .pycode import DEFAULT_PACKAGES, DEFAULT_STDLIB, pycode_items

    names = tuple(recipe.source.get("packages") or (DEFAULT_STDLIB + DEFAULT_PACKAGES))
    items = pycode_items(split, names)
    rng = random.Random(recipe.seed)
    out = []
    for task in recipe.tasks:
        instruction = recipe.instructions.get(task, recipe.instruction)
        dataset = f"{recipe.name}_{task}"
        if task == "retrieval":
            unique = {item.code: item for item in items}  # one entry per distinct code text
            tuples = [TrainingTuple(dataset, task, instruction, item.summary, item.code) for item in unique.values()
                      if item.summary != item.code]
            info = {"mine": True, "corpus": list(unique)}
        elif task == "clustering":
            by_module: dict[str, list[str]] = defaultdict(list)
            for item in items:
                if item.docstring not in by_module[item.module]:
                    by_module[item.module].append(item.docstring)
            corpus, groups, tuples = [], [], []
            for module, docs in sorted(by_module.items()):
                corpus += docs
                groups += [module] * len(docs)
                if len(docs) < 2:
                    continue
                for index, doc in enumerate(docs):
                    partner = docs[(index + 1 + rng.randrange(len(docs) - 1)) % len(docs)]
                    tuples.append(TrainingTuple(dataset, task, instruction, doc, partner))
            info = {"mine": True, "corpus": corpus, "corpus_groups": groups}
        else:
            packages = sorted({item.package for item in items})
            seen, tuples = set(), []
            for item in items:
                if item.docstring in seen or len(packages) < 2:
                    continue
                seen.add(item.docstring)
                other = rng.choice([p for p in packages if p != item.package])
                tuples.append(TrainingTuple(dataset, task, instruction, item.docstring, item.package, [other]))
            info = {"mine": False}
        tuples = _cap(tuples, recipe, rng)
        if "corpus_groups" in info:
            group_of = dict(zip(info["corpus"], info["corpus_groups"], strict=True))
            info["query_groups"] = [group_of[t.query] for t in tuples]
        out.append((tuples, info))
    return out
