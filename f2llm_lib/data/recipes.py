"""Declarative recipes (``data_recipes/*.yaml``) that turn a source dataset into F2LLM tuples.

A recipe names its source (a hub dataset, a local file, or ``pycode``), maps source columns to roles, says how
positives and negatives are built, and caps the sample count. The file loads into typed sections (``SourceSpec``,
``BuildSpec``, ``MiningSpec``) through the library's one typed loader (``f2llm_lib.typed``): an unknown or misspelt
key, a wrong type or a value out of range is an error naming the file and the key.

Each build kind has one builder (``BUILDERS``) that returns a ``BuiltDataset``: the tuples, and when negatives are
to be mined, the candidate corpus with each candidate's group. Curation filters it with ``keep`` / ``keep_corpus``.
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import sys
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal

from ..paths import PUBLIC_DATA_ENV, REPO_ROOT, public_data_dir
from ..typed import from_mapping, load_yaml, rule
from .mining import MiningConfig
from .readers import read_hub, read_local
from .schema import TASK_TYPES, DataError, TrainingTuple, check_text

RECIPE_DIR = REPO_ROOT / "data_recipes"
PUBLIC_DATA = "${PUBLIC_DATA}"
SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
TaskType = Literal["retrieval", "classification", "clustering"]
BuildKind = Literal["tuples", "pairs", "label_verbalisation", "same_cluster", "pycode", "f2llm_v2_tokenized"]
# build kind -> (task types it makes, the roles its ``fields`` must map to source columns)
BUILD_NEEDS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "tuples": (TASK_TYPES, ("query", "positive")),
    "pairs": (("retrieval",), ("s1", "s2")),
    "label_verbalisation": (("classification",), ("text", "label")),
    "same_cluster": (("clustering",), ("text", "label")),
    "pycode": (TASK_TYPES, ()),
    # F2LLM-v2's training layout, already tokenized (``released_v2``): task types come from the dataset names
    "f2llm_v2_tokenized": (TASK_TYPES, ()),
}


@dataclass
class HubFallback:
    """The same public dataset on the hub, read when no local copy is configured (``F2LLM_PUBLIC_DATA``)."""

    hub_id: str
    split: str = "train"
    config: str | None = None
    fields: dict[str, str] = field(default_factory=dict)  # role -> the hub's column


@dataclass
class SourceSpec:
    """Where a recipe's records come from."""

    kind: Literal["local", "hub", "pycode"]
    path: str = ""  # local: a file, or a folder of parquet files with data_files: all
    format: Literal["jsonl", "csv", "tsv", "parquet"] | None = None  # local: when the suffix does not tell
    hub_id: str = ""
    config: str | None = None
    split: str = "train"
    packages: list[str] = field(default_factory=list)  # pycode: the installed packages to read
    data_files: str | None = None  # hub or local folder: "all" for F2LLM's released mix (one dataset per file)
    hub_fallback: HubFallback | None = None

    def cross_checks(self):
        yield self.kind != "local" or bool(self.path), "path", "set for a local source"
        yield self.kind != "hub" or bool(self.hub_id), "hub_id", "set for a hub source"


@dataclass
class BuildSpec:
    """How tuples are built from records."""

    kind: BuildKind
    score_min: float = 0.0  # pairs: keep pairs scored at least this (when a score field is mapped)
    label_names: dict[Any, str] = field(default_factory=dict)  # label -> the text its verbalisation uses
    num_negatives: int | None = field(default=None, metadata=rule(lambda v: v >= 1, "at least 1"))


@dataclass
class MiningSpec(MiningConfig):
    """A recipe's mining section: the scorer, then F2LLM's rule (``MiningConfig``)."""

    scorer: str = "bm25"  # bm25, st:<sentence-transformers model>, or a backbone spec

    def config(self) -> MiningConfig:
        return MiningConfig(**{f.name: getattr(self, f.name) for f in fields(MiningConfig)})


@dataclass
class Recipe:
    """One recipe file, typed: every key checked on load (unknown, wrong type, out of range, or not fitting the
    build kind), with the file named in the message."""

    name: str = field(metadata=rule(
        lambda v: bool(SAFE_NAME.match(v)), "a plain name (it becomes a folder and file name): letters, digits, "
        "'_', '-' and '.', not starting with '.' (e.g. my_dataset)"))
    source: SourceSpec
    build: BuildSpec
    path: Path = Path()  # the file it was read from (not a key of the file)
    task_type: TaskType | None = None
    tasks: list[TaskType] = field(default_factory=list)  # pycode: the task types to build
    instruction: str = ""
    instructions: dict[str, str] = field(default_factory=dict)  # pycode: per task type
    fields: dict[str, str] = field(default_factory=dict)  # role -> source column
    mining: MiningSpec = field(default_factory=MiningSpec)
    max_samples: int | None = field(default=None, metadata=rule(lambda v: v >= 1, "positive"))
    seed: int = 0
    decontaminate_against: list[str] = field(default_factory=list)
    # the MTEB tasks that share this source's data (another split of the same dataset): scores on them are not
    # zero-shot. "registered:<model>" stands for mteb's registered training data of that model (the released mixes)
    mteb_tasks: list[str] = field(default_factory=list)
    description: str = ""

    def cross_checks(self):
        kinds, roles = BUILD_NEEDS[self.build.kind]
        if self.build.kind == "pycode":
            yield bool(self.tasks), "tasks", f"a list of task types among {TASK_TYPES} for a pycode recipe"
        else:
            yield self.task_type in kinds, "task_type", f"one that fits build.kind {self.build.kind!r} ({kinds})"
        missing = [role for role in roles if role not in self.fields]
        yield not missing, "fields", f"a mapping of {missing} to source columns for build.kind {self.build.kind!r}"

    @property
    def digest(self) -> str:
        """Hash of the recipe file's bytes, recorded in the manifest of what it produced."""
        return hashlib.sha1(self.path.read_bytes()).hexdigest()[:12]


@dataclass
class BuiltDataset:
    """One dataset as curation carries it: its tuples and, when its negatives are to be mined, the candidate corpus
    (with each candidate's group for clustering, whose same-group candidates are never negatives)."""

    name: str
    tuples: list[TrainingTuple]
    corpus: list[str] | None = None  # None: the negatives come with the tuples (nothing to mine)
    corpus_groups: list[str] | None = None

    @property
    def mine(self) -> bool:
        return self.corpus is not None

    @property
    def query_groups(self) -> list[str] | None:
        """Each query's group (a clustering query is itself a candidate text of the corpus)."""
        if self.corpus_groups is None:
            return None
        group_of = dict(zip(self.corpus, self.corpus_groups, strict=True))
        return [group_of[t.query] for t in self.tuples]

    def keep(self, mask: list[bool]) -> BuiltDataset:
        """The tuples where ``mask`` is True (the corpus unchanged)."""
        return replace(self, tuples=[t for t, k in zip(self.tuples, mask, strict=True) if k])

    def keep_corpus(self, mask: list[bool]) -> BuiltDataset:
        """The candidates where ``mask`` is True, with their groups."""
        groups = None if self.corpus_groups is None else \
            [g for g, k in zip(self.corpus_groups, mask, strict=True) if k]
        return replace(self, corpus=[t for t, k in zip(self.corpus, mask, strict=True) if k], corpus_groups=groups)


def registered_training_tasks(name: str) -> set[str] | None:
    """mteb's registered training data of a model (task names; offline: mteb's own registry), or None when mteb
    does not know the model."""
    import mteb

    try:
        meta = mteb.get_model_meta(name)
    except Exception:  # mteb raises its own lookup errors for unknown names
        return None
    return set(meta.training_datasets) if meta.training_datasets is not None else None


def seen_mteb_tasks(recipes: list[Recipe]) -> list[str]:
    """The MTEB tasks whose data the recipes train on (``mteb_tasks``; ``registered:<model>`` expanded offline from
    mteb's model registry)."""
    tasks: set[str] = set()
    for recipe in recipes:
        for entry in recipe.mteb_tasks:
            if entry.startswith("registered:"):
                registered = registered_training_tasks(entry.removeprefix("registered:"))
                if registered is None:
                    raise DataError(f"{recipe.path}: mteb_tasks entry {entry!r}: mteb has no model of that name")
                tasks |= registered
            else:
                tasks.add(entry)
    return sorted(tasks)


def expand_mix(spec: str | Path, seen: tuple = ()) -> list[Recipe]:
    """A recipe, or the recipes a mix recipe lists (``name: ...`` and ``mix: [recipe, ...]``, nothing else)."""
    path = _recipe_path(spec)
    data = _read_yaml(path)
    if not isinstance(data, dict) or "mix" not in data:
        return [load_recipe(path)]
    extra = sorted(set(data) - {"name", "description", "mix"})
    if extra:
        raise DataError(f"{path}: unknown key {extra[0]!r} in a mix recipe; a mix has name, description and mix")
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
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        known = ", ".join(sorted(p.stem for p in RECIPE_DIR.glob("*.yaml")))
        raise DataError(f"{where}: recipe not found; shipped recipes: {known}") from exc
    return load_yaml(text, where, DataError)  # bounded: no aliases, no duplicate keys


def load_recipe(path: str | Path) -> Recipe:
    """Parse and check one recipe file (``yaml.safe_load``; no tags, no code)."""
    path = _recipe_path(path)
    data = _read_yaml(path)
    if isinstance(data, dict) and "mix" in data:
        raise DataError(f"{path}: a mix recipe; curate it with the pipeline (run_recipe / the command line), "
                        "which reads its members")
    if isinstance(data, dict) and "path" in data:
        raise DataError(f"{path}: unknown key 'path' (did you mean source.path?)")
    if not isinstance(data, dict):
        raise DataError(f"{path}: a recipe must be a mapping of keys to values")
    return from_mapping(Recipe, {**data, "path": path}, str(path), DataError)


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


def iter_records(recipe: Recipe) -> Iterator[tuple[str, dict]]:
    """The recipe's source records as ``(where, record)``, streamed: a local file a line or a parquet batch at a
    time, a hub dataset through ``datasets``' streaming mode."""
    source = recipe.source
    if source.kind == "local" and PUBLIC_DATA in source.path and public_data_dir() is None and source.hub_fallback:
        yield from read_hub_fallback(recipe)
    elif source.kind == "local":
        path = resolve_path(source.path, recipe)
        empty = True
        for where, record in read_local(path, source.format):
            empty = False
            yield where, record
        if empty:
            raise DataError(f"{path}: no records (an empty file); the recipe {recipe.path} needs a source with data")
    else:
        yield from read_hub(source.hub_id, source.config, source.split, source.data_files)


def read_records(recipe: Recipe) -> list[tuple[str, dict]]:
    """Every record in memory: for the builds that need them all at once (pairs, labels, clusters, mining)."""
    return list(iter_records(recipe))


def read_hub_fallback(recipe: Recipe) -> Iterator[tuple[str, dict]]:
    """The same public dataset from the hub when no local copy is configured: its records with the hub's columns
    renamed to the ones the recipe's ``fields`` name (``hub_fallback.fields`` maps each role to a hub column)."""
    fallback = recipe.source.hub_fallback
    missing = sorted(set(recipe.fields) - set(fallback.fields))
    if missing:
        raise DataError(f"{recipe.path}: source.hub_fallback.fields must map the recipe's roles {missing} to hub "
                        "columns too")
    print(f"[recipe] {recipe.name}: {PUBLIC_DATA_ENV} is not set; reading {fallback.hub_id} ({fallback.split} split) "
          "from the hub", flush=True)
    for where, record in read_hub(fallback.hub_id, fallback.config, fallback.split):
        yield where, {recipe.fields[role]: record[fallback.fields[role]] for role in recipe.fields}


def _column(record: dict, column: str, where: str) -> Any:
    if column not in record:
        raise DataError(f"{where}: missing column '{column}' (present: {sorted(record)}); fix the recipe's fields")
    return record[column]


def _cap(items: list, recipe: Recipe, rng: random.Random) -> list:
    if recipe.max_samples is not None and len(items) > recipe.max_samples:
        items = rng.sample(items, recipe.max_samples)
    return items


def same_group_pairs(members_by_group: dict[str, list[str]], rng: random.Random) -> list[tuple[str, str]]:
    """(text, another text of its group) for every text of every group with two or more members: F2LLM's clustering
    tuple, whose positive is another member of the query's cluster. The partner is drawn uniformly among the others."""
    pairs = []
    for group in sorted(members_by_group):
        members = members_by_group[group]
        if len(members) < 2:
            continue
        for index, text in enumerate(members):
            partner = members[(index + 1 + rng.randrange(len(members) - 1)) % len(members)]
            if partner != text:
                pairs.append((text, partner))
    return pairs


def _labelled_texts(recipe: Recipe, records: list[tuple[str, dict]]) -> dict[str, list[str]]:
    """Texts by label (as text), in source order, for the label-based builds."""
    f = recipe.fields
    texts_by_label: dict[str, list[str]] = defaultdict(list)
    for where, record in records:
        text = check_text(_column(record, f["text"], where), where, f["text"])
        label = _column(record, f["label"], where)
        if not isinstance(label, str | int):
            raise DataError(f"{where}: label must be text or an integer, got {type(label).__name__}")
        texts_by_label[str(label)].append(text)
    if len(texts_by_label) < 2:
        raise DataError(f"{recipe.path}: {recipe.build.kind} needs at least two labels, found {sorted(texts_by_label)}")
    return texts_by_label


def build_tuples(recipe: Recipe, records: list[tuple[str, dict]], rng: random.Random) -> BuiltDataset:
    """Rows already in tuple form (query, positive, negative_*), as in the released F2LLM data: nothing to mine.
    In memory; :func:`stream_tuples` gives the same tuples a row at a time."""
    return BuiltDataset(recipe.name, list(_capped_tuples(recipe, lambda: iter(records), rng)))


def stream_tuples(recipe: Recipe) -> Iterator[TrainingTuple]:
    """:func:`build_tuples` streamed from the source, for data at F2LLM's scale (6M rows of 24 negatives): one row in
    memory at a time. With ``max_samples`` the source is read twice: once to count the usable rows, once to keep a
    uniform sample of them (the rows ``build_tuples`` keeps, in source order)."""
    return _capped_tuples(recipe, lambda: iter_records(recipe), random.Random(recipe.seed))


def _capped_tuples(recipe: Recipe, open_records, rng: random.Random) -> Iterator[TrainingTuple]:
    keep: set[int] | None = None
    if recipe.max_samples is not None:
        usable = sum(1 for _ in _tuples_of(recipe, open_records(), quiet=True))
        if usable > recipe.max_samples:  # the same draw as _cap over the usable rows
            keep = set(rng.sample(range(usable), recipe.max_samples))
    for index, item in enumerate(_tuples_of(recipe, open_records())):
        if keep is None or index in keep:
            yield item


def _tuples_of(recipe: Recipe, records, quiet: bool = False) -> Iterator[TrainingTuple]:
    """One tuple per usable row (a row whose query equals its positive is dropped, and counted)."""
    f, same, rows = recipe.fields, 0, 0
    negative_columns: dict[tuple, list[str]] = {}  # a record's columns -> its negative columns in order
    for where, record in records:
        if rows == 0:
            _check_tuple_columns(recipe, record, quiet)
        rows += 1
        columns = tuple(record)
        if columns not in negative_columns:  # once per file's schema, not per row (6M rows of 26 columns)
            negative_columns[columns] = sorted((c for c in columns if _is_negative_column(c)), key=_negative_order)
        negatives = [check_text(record[c], where, c) for c in negative_columns[columns] if record[c]]
        query = check_text(_column(record, f["query"], where), where, f["query"])
        positive = check_text(_column(record, f["positive"], where), where, f["positive"])
        if query == positive:  # nothing to learn, and a perfect score for free: dropped, as pairs builds do
            same += 1
            continue
        yield TrainingTuple(recipe.name, recipe.task_type, recipe.instruction, query, positive, negatives)
    if same and not quiet:
        print(f"[curate] {recipe.name}: dropped {same} of {rows} rows whose query equals its positive",
              file=sys.stderr, flush=True)


def build_pairs(recipe: Recipe, records: list[tuple[str, dict]], rng: random.Random) -> BuiltDataset:
    """Sentence pairs (s1 -> s2) as retrieval tuples, optionally only those scored at least ``build.score_min``;
    every sentence is a mining candidate."""
    f, tuples, corpus, seen, same = recipe.fields, [], [], set(), 0
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
            if score < recipe.build.score_min:
                continue
        if s1 != s2:
            tuples.append(TrainingTuple(recipe.name, "retrieval", recipe.instruction, s1, s2))
        else:
            same += 1
    if same:
        print(f"[curate] {recipe.name}: dropped {same} pairs whose two sentences are the same text",
              file=sys.stderr, flush=True)
    return BuiltDataset(recipe.name, _cap(tuples, recipe, rng), corpus=corpus)


def build_label_verbalisation(recipe: Recipe, records: list[tuple[str, dict]], rng: random.Random) -> BuiltDataset:
    """Classification as F2LLM casts it: text -> its label's name, one other label's name as the negative."""
    texts_by_label = _labelled_texts(recipe, records)
    labels = sorted(texts_by_label)
    names = recipe.build.label_names
    verbal = {label: str(names.get(label, label)).replace("_", " ") for label in labels}
    tuples = []
    for label in labels:
        for text in texts_by_label[label]:
            other = rng.choice([x for x in labels if x != label])
            tuples.append(TrainingTuple(recipe.name, "classification", recipe.instruction, text, verbal[label],
                                        [verbal[other]]))
    return BuiltDataset(recipe.name, _cap(tuples, recipe, rng))


def build_same_cluster(recipe: Recipe, records: list[tuple[str, dict]], rng: random.Random) -> BuiltDataset:
    """Clustering as F2LLM casts it: another text of the same label is the positive; every text is a candidate,
    labelled with its group so that same-label candidates are never mined as negatives."""
    texts_by_label = _labelled_texts(recipe, records)
    corpus = [text for label in sorted(texts_by_label) for text in texts_by_label[label]]
    groups = [label for label in sorted(texts_by_label) for _ in texts_by_label[label]]
    tuples = [TrainingTuple(recipe.name, "clustering", recipe.instruction, text, partner)
              for text, partner in same_group_pairs(texts_by_label, rng)]
    return BuiltDataset(recipe.name, _cap(tuples, recipe, rng), corpus=corpus, corpus_groups=groups)


def _tokenized_elsewhere(recipe: Recipe, records, rng) -> BuiltDataset:
    raise DataError(f"{recipe.path}: build.kind f2llm_v2_tokenized is data tokenized already (F2LLM-v2's training "
                    "layout): curate it with the pipeline (run_recipe, python -m f2llm_lib.data.pipeline), which "
                    "writes it straight into the tokenized format")


BUILDERS = {"tuples": build_tuples, "pairs": build_pairs, "label_verbalisation": build_label_verbalisation,
            "same_cluster": build_same_cluster, "f2llm_v2_tokenized": _tokenized_elsewhere}


def build_examples(recipe: Recipe, records: list[tuple[str, dict]]) -> BuiltDataset:
    """The recipe's dataset without mined negatives yet (``build.kind`` picks the builder; pycode recipes go through
    :func:`build_pycode_examples`)."""
    return BUILDERS[recipe.build.kind](recipe, records, random.Random(recipe.seed))


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
    if recipe.source.kind == "local":
        folder = resolve_path(recipe.source.path, recipe)
        if not folder.is_dir():
            raise DataError(f"{recipe.path}: source.path {folder} must be a folder of the released parquet files")
        files = sorted(str(p) for p in folder.glob("*.parquet"))
        others = sorted(p.name for p in folder.iterdir() if p.is_file() and p.suffix != ".parquet"
                        and not p.name.startswith("."))
        if others:  # data_files: all reads the released mix's parquet files; say what it leaves out
            print(f"[curate] {folder}: data_files: all reads the {len(files)} .parquet file(s); not read: "
                  f"{', '.join(others[:10])}{' ...' if len(others) > 10 else ''} (convert them to parquet, or give "
                  "each its own recipe)", file=sys.stderr, flush=True)
        where = str(folder)
    else:
        from huggingface_hub import list_repo_files

        files = sorted(f for f in list_repo_files(recipe.source.hub_id, repo_type="dataset")
                       if f.endswith(".parquet"))
        where = recipe.source.hub_id
    if not files:
        raise DataError(f"{recipe.path}: no parquet files in {where}")
    return files


def mix_file_recipe(recipe: Recipe, file: str) -> Recipe:
    """The recipe of one file of the released mix: the file's name as the dataset, its task type from the name."""
    local = recipe.source.kind == "local"
    source = replace(recipe.source, path=file, data_files=None) if local else replace(recipe.source, data_files=file)
    return replace(recipe, name=Path(file).stem, task_type=infer_task_type(file), source=source)


def _is_negative_column(column: str) -> bool:
    return column.startswith("negative_") and column.removeprefix("negative_").isdigit()


def _check_tuple_columns(recipe: Recipe, record: dict, quiet: bool = False) -> None:
    """Only ``negative_<n>`` columns are negatives: another column that looks like one is refused (it would be
    trained on as a text), and any other extra column is named as ignored."""
    used = {recipe.fields.get("query"), recipe.fields.get("positive")}
    odd = sorted(c for c in record if c.startswith("negative") and not _is_negative_column(c))
    if odd:
        raise DataError(f"{recipe.path}: column(s) {odd} of {recipe.source.path or recipe.source.hub_id} look like "
                        "negatives but are not named negative_<n>; rename them negative_1, negative_2, ... if they "
                        "are negatives, or drop them from the file (they would otherwise be trained on as texts)")
    ignored = sorted(c for c in record if c not in used and not _is_negative_column(c))
    if ignored and not quiet:
        print(f"[curate] {recipe.name}: ignoring column(s) {ignored} (a tuple is {sorted(c for c in used if c)} and "
              "negative_<n>)", file=sys.stderr, flush=True)


def _negative_order(column: str) -> int:
    suffix = column.removeprefix("negative_")
    return int(suffix) if suffix.isdigit() else 10**6


def build_pycode_examples(recipe: Recipe, split: str = "train") -> list[BuiltDataset]:
    """pycode as up to three datasets: retrieval (summary -> code), clustering (docstring -> docstring of the same
    module) and classification (docstring -> its package)."""
    from .pycode import DEFAULT_PACKAGES, DEFAULT_STDLIB, pycode_items

    names = tuple(recipe.source.packages or (DEFAULT_STDLIB + DEFAULT_PACKAGES))
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
            built = BuiltDataset(dataset, _cap(tuples, recipe, rng), corpus=list(unique))
        elif task == "clustering":
            by_module: dict[str, list[str]] = defaultdict(list)
            for item in items:
                if item.docstring not in by_module[item.module]:
                    by_module[item.module].append(item.docstring)
            corpus = [doc for module in sorted(by_module) for doc in by_module[module]]
            groups = [module for module in sorted(by_module) for _ in by_module[module]]
            tuples = [TrainingTuple(dataset, task, instruction, doc, partner)
                      for doc, partner in same_group_pairs(by_module, rng)]
            built = BuiltDataset(dataset, _cap(tuples, recipe, rng), corpus=corpus, corpus_groups=groups)
        else:
            packages = sorted({item.package for item in items})
            seen, tuples = set(), []
            for item in items:
                if item.docstring in seen or len(packages) < 2:
                    continue
                seen.add(item.docstring)
                other = rng.choice([p for p in packages if p != item.package])
                tuples.append(TrainingTuple(dataset, task, instruction, item.docstring, item.package, [other]))
            built = BuiltDataset(dataset, _cap(tuples, recipe, rng))
        out.append(built)
    return out
