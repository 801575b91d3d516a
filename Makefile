# Two commands for a fresh machine:
#   make demo   create .venv, install minildm, run the end-to-end demo on toy faces
#   make test   create .venv, install minildm, run the unit tests and every notebook (nbval),
#               leaving out the tests marked slow (about 17 minutes on 2 cores)
#   make check  the same with the slow tests: everything CI runs (.ci/run)
#   make lab    create .venv, install minildm, start JupyterLab on notebooks/
# A plain PyPI torch wheel is a CUDA build on Linux (right for a GPU box); set TORCH to
# pick another build, e.g. make test TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu"
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
BIN = $(VENV)/bin

.PHONY: demo test check lab install clean

demo: $(VENV)/.installed
	$(BIN)/python -m minildm demo

test: $(VENV)/.installed
	MINILDM_PROFILE=tiny $(BIN)/python -m pytest -m "not slow"

check: $(VENV)/.installed
	MINILDM_PROFILE=tiny $(BIN)/python -m pytest

lab: $(VENV)/.installed
	$(BIN)/python -m jupyterlab --ServerApp.root_dir=notebooks $(LAB_OPTIONS)

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install $(TORCH)
	$(BIN)/python -m pip install -e ".[dev,lab]"
	touch $@

clean:
	rm -rf $(VENV) data/cache runs
