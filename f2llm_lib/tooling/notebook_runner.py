"""Run notebooks headless with papermill, under a named profile of checked parameters.

papermill injects whatever parameters it is given, so a misspelt key silently leaves the default in place.
This runner reads each notebook's cell tagged ``parameters`` and rejects unknown names and wrong types
before any kernel starts. Profiles live in ``ci/params/<profile>/<notebook stem>.yaml``.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import datetime as dt
import json
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nbformat

from ..paths import REPO_ROOT
from ..typed import from_mapping, load_yaml
from .chain import CHAIN

NOTEBOOK_DIR = REPO_ROOT / "notebooks"
PARAMS_DIR = REPO_ROOT / "ci" / "params"
RUNS_DIR = REPO_ROOT / "runs"
PROFILES = ("smoke", "cpu", "workshop", "gpu", "gpu-qwen3")
KERNEL_NAME = "f2llm"
# Set by the runner itself on every run; a notebook must declare it in its parameters cell.
RUNNER_PARAMETERS = ("OUTPUT_DIR",)
# The main job chains notebooks through their results.json (see tooling.chain).


class NotebookParameterError(ValueError):
    """A profile names a parameter the notebook does not have, or gives it a wrong type."""


class NotebookRunError(RuntimeError):
    """A notebook failed; the message names the notebook and the cell."""


@dataclass(frozen=True)
class Parameter:
    name: str
    default: Any
    type_name: str


def read_parameters(notebook: Path) -> dict[str, Parameter]:
    """The names, defaults and types declared in the notebook's single cell tagged ``parameters``."""
    nb = nbformat.read(notebook, as_version=4)
    cells = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    if len(cells) != 1:
        raise NotebookParameterError(f"{notebook}: expected exactly one cell tagged 'parameters', found {len(cells)}")
    params: dict[str, Parameter] = {}
    for node in ast.parse(cells[0].source).body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None:
            name, value, annotation = node.target.id, node.value, ast.unparse(node.annotation)
        elif isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            name, value, annotation = node.targets[0].id, node.value, None
        else:
            continue
        try:
            default = ast.literal_eval(value)
        except ValueError as exc:
            raise NotebookParameterError(f"{notebook}: parameter {name} must have a literal default") from exc
        params[name] = Parameter(name, default, annotation or type(default).__name__)
    return params


# Annotations a parameters cell may use, and the types they check (anything else is taken as it comes).
_ANNOTATIONS = {"int": int, "float": float, "str": str, "bool": bool}


def parameters_class(notebook: Path) -> type:
    """The notebook's parameters as a dataclass (name, annotation, literal default), for the library's one typed
    loader: a profile is checked like any other config."""
    declared = read_parameters(notebook)
    specs = [(name, _ANNOTATIONS.get(p.type_name, Any), dataclasses.field(default=p.default))
             for name, p in declared.items()]
    return dataclasses.make_dataclass(f"{notebook.stem}_parameters", specs)


def validate_parameters(notebook: Path, values: dict[str, Any], source: str = "parameters") -> dict[str, Any]:
    """Check ``values`` against the notebook's declared parameters; raise naming the notebook and the key."""
    from_mapping(parameters_class(notebook), values, f"{notebook.name} (from {source})", NotebookParameterError,
                 noun="parameter")
    return values


def load_profile(profile: str, notebook: Path) -> dict[str, Any]:
    """The profile's parameters for one notebook (an absent file means: the notebook's defaults)."""
    folder = PARAMS_DIR / profile
    if not folder.is_dir():
        raise NotebookParameterError(f"unknown profile {profile!r}: no folder {folder}. Profiles: {PROFILES}")
    known = {nb.stem for nb in all_notebooks()} | {Path(notebook).stem}
    strays = sorted(p.name for p in folder.glob("*.y*ml") if p.stem not in known)
    if strays:  # a misspelt file name would leave its notebook on its defaults without a word
        import difflib

        hints = [f"{name} (did you mean {difflib.get_close_matches(Path(name).stem, known, 1)[0]}.yaml?)"
                 if difflib.get_close_matches(Path(name).stem, known, 1) else name for name in strays]
        raise NotebookParameterError(f"{folder}: {', '.join(hints)} names no notebook; profile files are named "
                                     "after their notebook (<notebook>.yaml), or the notebook runs its defaults")
    path = folder / f"{notebook.stem}.yaml"
    if not path.exists():
        return {}
    values = load_yaml(path.read_text(encoding="utf-8"), str(path), NotebookParameterError) or {}
    if not isinstance(values, dict):
        raise NotebookParameterError(f"{path}: expected a mapping of parameter names to values")
    source = path.relative_to(REPO_ROOT) if path.is_relative_to(REPO_ROOT) else path
    return validate_parameters(notebook, values, source=str(source))


def _failure_message(notebook: Path, executed: Path, exc: Exception) -> str:
    """Name the failing cell by its index in the source notebook (papermill adds cells to the copy)."""
    cell_info = "an unknown cell"
    try:
        source_ids = [cell.get("id") for cell in nbformat.read(notebook, as_version=4).cells]
        for index, cell in enumerate(nbformat.read(executed, as_version=4).cells):
            if cell.get("metadata", {}).get("papermill", {}).get("exception"):
                source_index = source_ids.index(cell.get("id")) if cell.get("id") in source_ids else index
                first_line = (cell.source.splitlines() or [""])[0][:80]
                cell_info = f"cell {source_index} ({first_line!r})"
                break
    except Exception:  # the executed copy may not exist when the kernel never started
        pass
    message = str(getattr(exc, "evalue", exc))
    if isinstance(exc, TimeoutError) or "timed out" in message:  # nbclient's CellTimeoutError: no executed copy
        preview = message.split("-------------------")
        first = preview[1].strip().strip("[]").split("', '")[0].strip("'\"") if len(preview) > 1 else "?"
        if cell_info == "an unknown cell":
            cell_info = f"the cell starting {first[:80]!r}"
        return (f"{notebook.name} timed out at {cell_info}: the cell ran longer than the per-cell limit; raise "
                f"--cell-timeout or lower the profile's sizes. Executed copy: {executed}")
    name = getattr(exc, "ename", type(exc).__name__)
    reason = f"{name}: {message.splitlines()[0]}" if message else name
    return f"{notebook.name} failed at {cell_info}: {reason}. Executed copy: {executed}"


def run_notebook(notebook: Path, output_dir: Path, parameters: dict[str, Any], *, cell_timeout: int = 600,
                 kernel_name: str = KERNEL_NAME) -> Path:
    """Execute one notebook into ``output_dir``; return the executed copy's path."""
    import papermill

    notebook = notebook.resolve()
    work_dir = output_dir / notebook.stem
    work_dir.mkdir(parents=True, exist_ok=True)
    # OUTPUT_DIR is the runner's own: a notebook that does not declare it fails here, before a kernel starts.
    params = validate_parameters(notebook, {**parameters, "OUTPUT_DIR": str(work_dir)})
    executed = output_dir / notebook.name
    try:
        papermill.execute_notebook(
            str(notebook), str(executed), parameters=params, kernel_name=kernel_name,
            execution_timeout=cell_timeout, cwd=str(notebook.parent), progress_bar=False, log_output=True,
        )
    except Exception as exc:
        raise NotebookRunError(_failure_message(notebook, executed, exc)) from exc
    return executed


def all_notebooks() -> list[Path]:
    return sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))


def run_profile(profile: str, notebooks: list[Path] | None = None, run_dir: Path | None = None,
                cell_timeout: int = 600, kernel_name: str = KERNEL_NAME, report: bool = True,
                continue_run: bool = False) -> Path:
    """Run notebooks in order with a profile; return the run folder. Validates all profiles first.

    Without ``run_dir``, a new folder ``runs/<timestamp>-<profile>[-n]``, created here (two runs started in the same
    second get two). A ``run_dir`` that holds an earlier run's results is refused unless ``continue_run``: its report
    would mix the earlier notebooks' scores with this run's."""
    notebooks = notebooks or all_notebooks()
    missing = [str(nb) for nb in notebooks if not Path(nb).is_file()]
    if missing:  # before any run folder exists
        raise NotebookRunError(f"no such notebook: {', '.join(missing)}; the notebooks are "
                               f"{', '.join(p.name for p in all_notebooks())} in {NOTEBOOK_DIR}")
    params = {nb: load_profile(profile, nb) for nb in notebooks}  # fail on a typo before anything runs
    if run_dir is None:
        run_dir = new_run_folder(profile)
    else:
        earlier = sorted(p.parent.name for p in Path(run_dir).glob("*/results.json"))
        if earlier and not continue_run:
            raise NotebookRunError(f"--run-dir {run_dir} holds an earlier run ({', '.join(earlier)}): this run's "
                                   "notebooks and report would mix with its results. Pass --continue to add to that "
                                   "run on purpose, or give a new folder (or none: runs/<timestamp>)")
        run_dir.mkdir(parents=True, exist_ok=True)
    timings_path = run_dir / "timings.json"
    timings = json.loads(timings_path.read_text()).get("seconds", {}) if continue_run and timings_path.exists() else {}
    for nb in notebooks:
        chained = chained_parameters(nb, run_dir, params[nb])
        if chained:
            print(f"[run_notebooks] {nb.name}: from earlier notebooks: {chained}", flush=True)
        print(f"[run_notebooks] {nb.name} ({profile}) ...", flush=True)
        start = time.perf_counter()
        executed = run_notebook(nb, run_dir, {**params[nb], **chained}, cell_timeout=cell_timeout,
                                kernel_name=kernel_name)
        timings[nb.name] = round(time.perf_counter() - start, 1)
        print(f"[run_notebooks] {nb.name} done in {timings[nb.name]} s -> {executed}", flush=True)
        (run_dir / "timings.json").write_text(json.dumps({"profile": profile, "seconds": timings}, indent=2))
    if report and (run_dir / "04_mteb_evaluation" / "results.json").exists():
        from ..bench.run_report import write_run_report

        write_run_report(run_dir)
    return run_dir


def new_run_folder(profile: str) -> Path:
    """``runs/<timestamp>-<profile>``, or ``-2``, ``-3``... when that exists: made here, so it is this run's alone."""
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    RUNS_DIR.mkdir(parents=True, exist_ok=True)
    for attempt in range(1, 1000):
        folder = RUNS_DIR / (f"{stamp}-{profile}" if attempt == 1 else f"{stamp}-{profile}-{attempt}")
        try:
            folder.mkdir()
        except FileExistsError:
            continue
        return folder
    raise NotebookRunError(f"{RUNS_DIR}: no free run folder name for {stamp}-{profile}")


def chained_parameters(notebook: Path, run_dir: Path, explicit: dict[str, Any]) -> dict[str, Any]:
    """Values taken from the results.json of notebooks that already ran in ``run_dir`` (see CHAIN)."""
    values = {}
    for param, (source, key) in CHAIN.get(notebook.stem, {}).items():
        results = run_dir / source / "results.json"
        if param in explicit or not results.exists():
            continue
        data = json.loads(results.read_text())
        if key not in data:
            raise NotebookRunError(f"{results}: no {key!r}, which {notebook.name} needs as {param}")
        values[param] = data[key]
    return validate_parameters(notebook, values, source="earlier notebooks") if values else {}


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=prog, description="Run the F2LLM notebooks headless with a parameter profile.")
    parser.add_argument("notebooks", nargs="*", type=Path, help="notebooks to run (default: all, in order)")
    parser.add_argument("--profile", default="cpu", choices=PROFILES)
    parser.add_argument("--run-dir", type=Path, help="where executed copies go (default: runs/<timestamp>)")
    parser.add_argument("--cell-timeout", type=int, default=900, help="seconds per cell before failing")
    parser.add_argument("--no-report", action="store_true", help="write no run report (e.g. into runs/interactive)")
    parser.add_argument("--continue", dest="continue_run", action="store_true",
                        help="add to the earlier run in --run-dir (without it, a --run-dir holding results is refused)")
    parser.add_argument("--kernel", default=KERNEL_NAME, help="Jupyter kernel name (make registers 'f2llm')")
    parser.add_argument("--quiet", action="store_true", help="do not stream the notebooks' cell outputs")
    args = parser.parse_args(argv)
    if not args.quiet:  # papermill logs cell outputs at INFO: show them, so progress is visible as it happens
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("    %(message)s"))
        logger = logging.getLogger("papermill")
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    try:
        run_dir = run_profile(args.profile, [p.resolve() for p in args.notebooks] or None, args.run_dir,
                              args.cell_timeout, args.kernel, report=not args.no_report,
                              continue_run=args.continue_run)
    except (NotebookParameterError, NotebookRunError) as exc:
        print(f"[run_notebooks] ERROR: {exc}", file=sys.stderr)
        return 1
    print(f"[run_notebooks] executed notebooks are in {run_dir}")
    if (run_dir / "report.md").exists():
        print(f"[run_notebooks] report: {run_dir / 'report.md'}")
    return 0
