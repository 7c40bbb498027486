"""``pycode``: real text that exists wherever the project installs, the offline default training/eval data.

Functions and classes that carry docstrings, parsed (never imported) from a fixed list of standard-library modules
and installed packages. Each item has its module, its top-level package, the docstring and the code without the
docstring. Train and evaluation parts are split by module (a stable hash of the module name), so no evaluation
module is ever seen in training; texts that still coincide across the split are removed from train by
decontamination. Deterministic for a given environment.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import importlib.util
import sysconfig
import textwrap
from dataclasses import dataclass
from pathlib import Path

from .schema import DataError

DEFAULT_STDLIB = ("json", "email", "http", "logging", "urllib", "xml", "argparse", "pathlib", "csv", "textwrap",
                  "difflib", "statistics", "fractions", "configparser", "calendar", "gettext", "zipfile", "tarfile",
                  "shutil", "tempfile", "string", "pprint", "inspect", "ast", "dataclasses", "enum", "functools",
                  "html", "mailbox", "smtplib", "ftplib", "imaplib", "sqlite3", "unittest", "concurrent", "asyncio")
DEFAULT_PACKAGES = ("yaml", "tqdm", "jinja2", "nbformat", "packaging", "markdown_it", "pygments", "click")
MIN_DOCSTRING_WORDS = 4
MAX_CODE_CHARS = 4000


@dataclass(frozen=True)
class CodeItem:
    module: str
    package: str
    qualname: str
    docstring: str
    code: str

    @property
    def summary(self) -> str:
        """The docstring's first paragraph, on one line: the CodeSearchNet-style query."""
        return " ".join(self.docstring.strip().split("\n\n")[0].split())


def _package_files(name: str) -> list[tuple[str, Path]]:
    """(module name, file) pairs of a stdlib module or installed package, located without importing it."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    candidates = [stdlib / name, stdlib / f"{name}.py"]
    spec = importlib.util.find_spec(name) if not any(c.exists() for c in candidates) else None
    if spec is not None and spec.submodule_search_locations:
        candidates = [Path(next(iter(spec.submodule_search_locations)))]
    elif spec is not None and spec.origin and spec.origin.endswith(".py"):
        candidates = [Path(spec.origin)]
    root = next((c for c in candidates if c.exists()), None)
    if root is None:
        raise DataError(f"pycode: module or package {name!r} is not installed; remove it from the recipe's packages")
    if root.is_file():
        return [(name, root)]
    files = []
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        if any(p in ("test", "tests", "idle_test") or p.startswith("_") and p != "__init__" for p in parts):
            continue
        module = ".".join((name, *[p for p in parts if p != "__init__"]))
        files.append((module, path))
    return files


def _strip_docstring(lines: list[str], node: ast.AST) -> str | None:
    """The node's source lines without its docstring (decorators excluded), dedented."""
    body = getattr(node, "body", [])
    if not body or not isinstance(body[0], ast.Expr):
        return None
    doc_node = body[0]
    kept = lines[node.lineno - 1:doc_node.lineno - 1] + lines[doc_node.end_lineno:node.end_lineno]
    code = textwrap.dedent("\n".join(kept)).strip()
    return code if len(code.splitlines()) >= 2 else None  # a bare signature is not worth retrieving


@functools.lru_cache(maxsize=8)
def extract_items(names: tuple[str, ...]) -> tuple[CodeItem, ...]:
    """Every documented function, method and class in the given modules, in a deterministic order."""
    items = []
    for name in names:
        for module, path in _package_files(name):
            try:
                source = path.read_text(encoding="utf-8")
                tree = ast.parse(source)
                lines = source.splitlines()
            except (SyntaxError, UnicodeDecodeError, ValueError):
                continue  # a few stdlib test fixtures are deliberately broken; they are not text we want
            stack = [(tree, "")]
            while stack:
                parent, prefix = stack.pop(0)
                for node in getattr(parent, "body", []):
                    if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                        continue
                    qualname = f"{prefix}{node.name}"
                    if isinstance(node, ast.ClassDef):
                        stack.append((node, f"{qualname}."))
                    if node.name.startswith("_"):
                        continue
                    doc = ast.get_docstring(node)
                    if not doc or len(doc.split()) < MIN_DOCSTRING_WORDS:
                        continue
                    code = _strip_docstring(lines, node)
                    if code is None or len(code) > MAX_CODE_CHARS:
                        continue
                    items.append(CodeItem(module, name, qualname, doc.strip(), code))
    return tuple(items)


def module_split(module: str, eval_percent: int = 20) -> str:
    """'eval' for a stable ``eval_percent`` share of modules, else 'train' (same answer on every machine)."""
    bucket = int(hashlib.sha1(module.encode()).hexdigest(), 16) % 100
    return "eval" if bucket < eval_percent else "train"


def pycode_items(split: str, names: tuple[str, ...] = DEFAULT_STDLIB + DEFAULT_PACKAGES,
                 eval_percent: int = 20) -> list[CodeItem]:
    """The train or eval part of pycode."""
    if split not in ("train", "eval"):
        raise DataError(f"pycode split must be 'train' or 'eval', got {split!r}")
    return [item for item in extract_items(tuple(names)) if module_split(item.module, eval_percent) == split]
