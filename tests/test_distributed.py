"""Several processes with torchrun (gloo on the CPU): the same run as one process that
accumulates their micro-batches, and a resume after one process is killed."""

import multiprocessing as mp
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from minildm import checkpoint as ckpt
from minildm import distributed

TINY = ("--profile", "tiny", "--seed", "0")
KILL_RANK_ONE = """
import os, signal, sys
from minildm import trainer
from minildm.app.cli import main

real_step = trainer.Trainer.train_step
def step_then_kill(self):
    if self.step == int(sys.argv[1]) and os.environ["RANK"] == "1":
        os.kill(os.getpid(), signal.SIGKILL)
    return real_step(self)
trainer.Trainer.train_step = step_then_kill
sys.exit(main(sys.argv[2:]))
"""


def minildm(*args, tmp_path: Path, processes: int = 1, script: Path | None = None) -> subprocess.CompletedProcess:
    environment = {**os.environ, "MINILDM_DATA_DIR": str(tmp_path / "data"), "OMP_NUM_THREADS": "1"}
    if processes == 1:
        command = [sys.executable, "-m", "minildm", *map(str, args)]
    else:
        launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
        # "--": torchrun would otherwise read an option such as --n as an abbreviation of its own
        command = [*launch, *([str(script)] if script else ["-m", "minildm"]), "--", *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, env=environment, timeout=600)


def state(run: Path) -> tuple[dict[str, torch.Tensor], list[dict]]:
    tensors, metadata = ckpt.load(run / "checkpoint.safetensors")
    return {k: v for k, v in tensors.items() if not k.startswith("rng.")}, metadata["history"]


def assert_same_run(run: Path, reference: Path, tolerance: float):
    (ours, our_history), (theirs, their_history) = state(run), state(reference)
    assert [e["step"] for e in our_history] == [e["step"] for e in their_history]
    for mine, other in zip(our_history, their_history):
        assert mine.keys() == other.keys()
        assert all(mine[k] == pytest.approx(other[k], rel=tolerance, abs=tolerance) for k in mine), (mine, other)
    assert ours.keys() == theirs.keys()
    for key in ours:
        torch.testing.assert_close(ours[key], theirs[key], atol=tolerance, rtol=tolerance, msg=key)


def test_rows_are_shared_out_and_gathered_back():
    for size in (1, 2, 3, 8):
        parts = [range(10)[distributed.my_rows(10, distributed.World(rank, size))] for rank in range(size)]
        assert [i for part in parts for i in part] == list(range(10))
        assert max(map(len, parts)) - min(map(len, parts)) <= 1
    rows = torch.arange(12.0).reshape(6, 2)
    assert torch.equal(distributed.gather_rows(rows, 6, distributed.World()), rows)


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """One process, two accumulated micro-batches of 8: an autoencoder, then an LDM."""
    folder = tmp_path_factory.mktemp("one-process")
    for args, batch in ((("train-ae", "--n", "48", "--out", folder / "ae"), "8 per device x 1 device(s) x 2 "
                         "accumulated = 16 images per step"),
                        (("train-ldm", "--ae", folder / "ae", "--out", folder / "ldm"), "16 per device x 1 device(s) "
                         "x 2 accumulated = 32 images per step")):
        result = minildm(*args, "--steps", "6", "--accumulate", "2", *TINY, tmp_path=folder)
        assert result.returncode == 0, result.stderr
        assert f"batch: {batch}; learning rate as the profile sets it" in result.stdout
    return folder


@pytest.mark.slow  # processes under torchrun: make check, not make test
def test_two_processes_train_as_one_process_accumulating_two_micro_batches(single, tmp_path):
    result = minildm("train-ae", "--n", "48", "--steps", "6", "--out", tmp_path / "ae", *TINY, tmp_path=tmp_path,
                     processes=2)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("batch: 8 per device x 2 device(s) x 1 accumulated = 16 images per step") == 1
    assert result.stdout.count("trained in") == 1  # only rank 0 speaks
    assert_same_run(tmp_path / "ae", single / "ae", tolerance=1e-4)

    result = minildm("train-ldm", "--ae", single / "ae", "--steps", "6", "--out", tmp_path / "ldm", *TINY,
                     tmp_path=tmp_path, processes=2)
    assert result.returncode == 0, result.stderr
    latents = ckpt.load(tmp_path / "ldm" / "latents.safetensors")[0]["latents"]  # encoded in two halves
    torch.testing.assert_close(latents, ckpt.load(single / "ldm" / "latents.safetensors")[0]["latents"],
                               atol=1e-5, rtol=1e-5)
    assert_same_run(tmp_path / "ldm", single / "ldm", tolerance=1e-4)


@pytest.mark.slow  # processes under torchrun: make check, not make test
def test_a_two_process_run_resumes_after_one_process_is_killed(tmp_path):
    script = tmp_path / "kill_rank_one.py"
    script.write_text(KILL_RANK_ONE)
    train = ("train-ae", "--n", "48", "--steps", "10", *TINY)
    reference = minildm(*train, "--out", tmp_path / "reference", tmp_path=tmp_path, processes=2)
    assert reference.returncode == 0, reference.stderr
    killed = minildm("5", *train, "--out", tmp_path / "run", tmp_path=tmp_path, processes=2, script=script)
    assert killed.returncode != 0
    assert ckpt.load(tmp_path / "run" / "checkpoint.safetensors")[1]["step"] == 4  # the last whole checkpoint
    again = minildm(*train, "--out", tmp_path / "run", tmp_path=tmp_path, processes=2)
    assert again.returncode == 0, again.stderr
    assert_same_run(tmp_path / "run", tmp_path / "reference", tolerance=0)


def write_configs(root, barrier, errors):
    """60 new run folders' config.json, each started with the other processes at the barrier."""
    for index in range(60):
        barrier.wait()
        try:
            ckpt.write_run_config(Path(root) / f"run{index}", {"stage": "ldm", "index": index})
        except Exception as error:
            errors.put(f"{type(error).__name__}: {error}")


def test_processes_that_write_one_run_folder_s_config_at_once_all_succeed(tmp_path):
    """Under torchrun every rank writes config.json into the same new folder at the same moment."""
    context = mp.get_context("fork")
    barrier, errors = context.Barrier(4), context.Queue()
    workers = [context.Process(target=write_configs, args=(str(tmp_path), barrier, errors)) for _ in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    failures = [errors.get() for _ in range(errors.qsize())]
    assert failures == [] and all(worker.exitcode == 0 for worker in workers)
    assert len(list(tmp_path.glob("run*/config.json"))) == 60 and not list(tmp_path.rglob("*.tmp"))
