# Two commands on a fresh machine: `make demo` and `make test`. Each creates .venv with the locked versions first.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat requirements.lock setup.cfg | cksum | cut -d' ' -f1)
# Two workers: most end-to-end tests wait on subprocesses, and CI has 2 cores (pytest-xdist is in the lock).
PYTEST_ARGS ?= -n 2

.PHONY: demo test compare bench venv lock clean

venv: $(STAMP)

$(STAMP): requirements.lock setup.cfg pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found; install Python 3.11 or run make PYTHON=python3.x" >&2; exit 2; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.lock
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps -e .
	rm -f $(VENV)/.installed-* && touch $@

# The main job: a quick MNIST-1D reproduction across model families, ending with a results table.
demo: $(STAMP)
	$(PY) -m experiments.reproduce mnist1d --quick --out=runs/demo

# pytest's own summary line ends the output; exit code 5 (no tests collected) fails loudly.
test: $(STAMP)
	@$(PY) -m pytest $(PYTEST_ARGS); rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "error: pytest collected no tests" >&2; exit 1; fi; exit $$rc

# The [reference] extra (torch, transformers; never in requirements.lock) for the PyTorch comparisons: CPU-only torch
# from PyTorch's index where reachable (PyPI's pulls GBs of CUDA libs); installed once per venv.
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
REFERENCE := $(VENV)/.reference-installed
$(REFERENCE): $(STAMP)
	$(PY) -c 'import torch' 2>/dev/null || $(PY) -m pip install --quiet --disable-pip-version-check --retries 1 --timeout 15 \
	  torch --index-url $(TORCH_CPU_INDEX) \
	  || echo "note: $(TORCH_CPU_INDEX) is not reachable; installing torch from the default index" >&2
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[reference]'
	touch $@

# Parity with Hugging Face's GPT-2 (results/gpt2_parity.md).
compare: $(REFERENCE)
	JAX_PLATFORMS=cpu $(PY) benchmarks/gpt2_parity.py

# JAX vs PyTorch side by side on this machine (results/benchmarks.md): train step, MFU, batch-1 latency, data wait.
BENCH_ARGS ?= --out=results
bench: $(REFERENCE)
	$(PY) -m experiments.benchmark $(BENCH_ARGS)

# Regenerates requirements.lock from setup.cfg's ranges in a scratch venv (run after changing dependencies).
lock:
	rm -rf /tmp/costlab-lock && $(PYTHON) -m venv /tmp/costlab-lock
	/tmp/costlab-lock/bin/pip install --quiet --disable-pip-version-check -e '.[test]'
	/tmp/costlab-lock/bin/pip freeze --exclude-editable --exclude costlab > requirements.lock

clean:
	rm -rf $(VENV) runs build *.egg-info
