"""Tests and notebooks run in the ``tiny`` profile unless told otherwise.

The run folders the notebooks write go to a temporary folder of the test session (one per
pytest-xdist worker, so that two workers never train into the same folder), which is deleted
at the end: a test run leaves nothing in ``runs/``. Under pytest-xdist (``make test`` runs two
workers, ``-n 2``) each worker and the notebook kernels it starts use one torch thread: two
processes of two threads each on two cores wait on each other far longer than they compute.
"""

import os
import shutil
import tempfile

os.environ.setdefault("MINILDM_PROFILE", "tiny")
_WORKER = os.environ.get("PYTEST_XDIST_WORKER")  # gw0, gw1, ... in a pytest-xdist worker
if _WORKER:
    os.environ["OMP_NUM_THREADS"] = "1"  # before torch is imported, here and in every kernel
_TEST_RUNS = None  # the session's own folder, deleted at the end (the controller's, under xdist)
if "MINILDM_RUNS_DIR" not in os.environ:  # a worker finds the controller's folder here
    _TEST_RUNS = tempfile.mkdtemp(prefix="minildm-test-runs-")
    os.environ["MINILDM_RUNS_DIR"] = _TEST_RUNS
if _WORKER:
    os.environ["MINILDM_RUNS_DIR"] = os.path.join(os.environ["MINILDM_RUNS_DIR"], _WORKER)


def pytest_sessionfinish(session, exitstatus):
    if _TEST_RUNS is not None:
        shutil.rmtree(_TEST_RUNS, ignore_errors=True)


def pytest_configure(config):
    if _WORKER:
        import torch

        torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    """Notebooks first: each is one long file, so under pytest-xdist the two workers start on
    them and the short unit-test files fill the gaps at the end."""
    items.sort(key=lambda item: item.path.suffix != ".ipynb")
