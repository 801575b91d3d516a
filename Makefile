# Two commands for a fresh machine:
#   make demo   create .venv, install minildm, run the end-to-end demo on toy faces
#   make test   create .venv, install minildm, run the unit tests and every notebook (nbval),
#               leaving out the tests marked slow: what a student runs first
#   make unit   the unit tests alone, without notebooks and slow tests: after each edit
#   make check  everything, the slow tests too: what CI runs (.ci/run)
#   make lab    create .venv, install minildm, start JupyterLab on notebooks/
# torch: on Linux without an NVIDIA driver (no nvidia-smi) the CPU build from PyTorch's own
# index, since a plain PyPI wheel there is a multi-GB CUDA build; otherwise PyPI's (CUDA on a
# GPU box, CPU/MPS on a Mac). Set TORCH to pick another build, e.g. make test TORCH="torch==2.13.0"
PYTHON ?= python3
VENV ?= .venv
ifeq ($(shell uname -s),Linux)
ifeq ($(shell command -v nvidia-smi),)
TORCH ?= torch==2.13.0+cpu --extra-index-url https://download.pytorch.org/whl/cpu
endif
endif
TORCH ?= torch==2.13.0
BIN = $(VENV)/bin
# two pytest-xdist workers, each test file (each notebook) whole on one of them (conftest.py);
# the slow tests run alone afterwards, since they time whole processes
PARALLEL = -n 2 --dist loadfile

.PHONY: demo test unit check lab install clean

demo: $(VENV)/.installed
	$(BIN)/python -m minildm demo

test: $(VENV)/.installed
	MINILDM_PROFILE=tiny $(BIN)/python -m pytest -m "not slow" $(PARALLEL)

unit: $(VENV)/.installed
	MINILDM_PROFILE=tiny $(BIN)/python -m pytest tests -m "not slow and not integration" $(PARALLEL)

check: $(VENV)/.installed
	MINILDM_PROFILE=tiny $(BIN)/python -m pytest -m "not slow" $(PARALLEL)
	MINILDM_PROFILE=tiny $(BIN)/python -m pytest -m slow

lab: $(VENV)/.installed
	$(BIN)/python -m jupyterlab --ServerApp.root_dir=notebooks $(LAB_OPTIONS)

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install $(TORCH)
	$(BIN)/python -m pip install -e ".[dev,lab]"
	touch $@

clean:
	rm -rf $(VENV) data/cache data/judge runs
