"""The package's imports flow one way: shared helpers, then the pipeline's steps in order, then the workbench.

Every ``import`` of every module counts, including those inside functions (a lazy import is still a dependency).
A module may import from its own layer or an earlier one; no set of modules may import each other in a cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "f2llm_lib"
# The pipeline's order: a run embeds (embedder), reads data, computes the loss, trains, then evaluates.
LAYERS = [
    {"f2llm_lib", "f2llm_lib.paths", "f2llm_lib.atomic", "f2llm_lib.ownership", "f2llm_lib.typed"},
    {"f2llm_lib.embedder"},
    {"f2llm_lib.data"},
    {"f2llm_lib.losses"},
    {"f2llm_lib.train"},
    {"f2llm_lib.evaluation"},
    {"f2llm_lib.bench", "f2llm_lib.teaching", "f2llm_lib.tooling"},
]
RUNTIME = ("embedder", "data", "losses", "train", "evaluation")


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every f2llm_lib module this file imports, resolved to module names."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("f2llm_lib")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("f2llm_lib"):
                continue
            found.add(target)
            for alias in node.names:  # `from . import fused` names a module, not an attribute
                candidate = f"{target}.{alias.name}"
                if (PACKAGE.parent / Path(*candidate.split("."))).with_suffix(".py").exists() or \
                        (PACKAGE.parent / Path(*candidate.split(".")) / "__init__.py").exists():
                    found.add(candidate)
    return found - {name}


def _layer(module: str) -> int:
    for index, members in enumerate(LAYERS):
        if any(module == m or (m != "f2llm_lib" and module.startswith(m + ".")) for m in members):
            return index
    raise AssertionError(f"{module}: not in any layer of tests/test_layout.py; place it there")


def _graph() -> dict[str, set[str]]:
    return {_module_name(p): _imports(p) for p in PACKAGE.rglob("*.py")}


def test_every_module_belongs_to_a_layer():
    for module in _graph():
        _layer(module)


def test_no_import_points_back_up_the_pipeline():
    backward = sorted(f"{module} (layer {_layer(module)}) imports {target} (layer {_layer(target)})"
                      for module, targets in _graph().items() for target in targets
                      if _layer(target) > _layer(module))
    assert not backward, "imports against the pipeline's order:\n" + "\n".join(backward)


def test_no_import_cycle():
    graph = _graph()
    cycles, state = [], {}

    def visit(module: str, trail: list[str]) -> None:
        state[module] = "open"
        for target in sorted(graph.get(module, ())):
            if target not in graph:
                continue
            if state.get(target) == "open":
                cycles.append(" -> ".join(trail[trail.index(target):] + [target]) if target in trail
                              else f"{module} -> {target}")
            elif target not in state:
                visit(target, [*trail, target])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    # A package's __init__ re-exporting its own submodules is not a cycle of dependencies between steps.
    real = [c for c in cycles if not all(part.startswith(c.split(" -> ")[0]) for part in c.split(" -> "))]
    assert not real, "import cycles:\n" + "\n".join(real)


def test_the_runtime_holds_no_benchmark_or_compile_check():
    for step in RUNTIME:
        names = {p.stem for p in (PACKAGE / step).glob("*.py")}
        assert not {n for n in names if "bench" in n or "kernel_check" in n or n in ("baselines", "teaching")}, \
            f"f2llm_lib/{step} holds workbench modules: {sorted(names)}"


def test_the_checker_sees_a_backward_arrow(tmp_path):
    """The walker resolves a lazy relative import inside a function (what a cycle usually hides behind)."""
    module = tmp_path / "f2llm_lib" / "embedder" / "probe.py"
    module.parent.mkdir(parents=True)
    module.write_text("def f():\n    from ..data.tokenized import TokenizedData\n")
    global PACKAGE
    saved, PACKAGE = PACKAGE, tmp_path / "f2llm_lib"
    try:
        assert "f2llm_lib.data.tokenized" in _imports(module)
        assert _layer("f2llm_lib.data.tokenized") > _layer(_module_name(module))
    finally:
        PACKAGE = saved
