"""Hard kills and determinism, on the command line as a user runs it.

A training process is killed with SIGKILL (what the OOM killer, a closed laptop or a preempted
cloud GPU do) at chosen points: in the middle of a training step, in the middle of writing a
checkpoint, of writing the sampling weights, and of writing the latent cache. The kill comes
from inside the process at an exact point: a small launcher wraps the function that writes
safetensors files (or the training step), so that the chosen call writes half a file and then
kills its own process. Each time the run folder must still hold a loadable checkpoint (or none
yet), and running the same command again must reach the same final weights, bit for bit, as a
run that was never interrupted."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from minildm import checkpoint as ckpt

pytestmark = pytest.mark.slow  # whole runs in separate processes: make check, not make test

LAUNCHER = """
import os, signal, sys
from minildm import checkpoint, trainer

target, nth = sys.argv[1], int(sys.argv[2])
calls = 0

def half_then_kill(write):
    def wrapped(*args, **kwargs):
        global calls
        calls += 1
        if calls == nth:
            write(*args, **kwargs)
            name = args[1] if len(args) > 1 else kwargs["filename"]
            with open(name, "r+b") as half:
                half.truncate(os.path.getsize(name) // 2)
            os.kill(os.getpid(), signal.SIGKILL)
        return write(*args, **kwargs)
    return wrapped

def matching(write):
    def wrapped(tensors, filename, metadata=None):
        if os.path.basename(filename).startswith("." + target):
            return counted(tensors, filename, metadata=metadata)
        return write(tensors, filename, metadata=metadata)
    return wrapped

if target == "step":
    real_step = trainer.Trainer.train_step
    def step_then_kill(self):
        if self.step == nth:
            self.loss_fn(self.batch(self.step), self.step)  # in the middle of the step
            os.kill(os.getpid(), signal.SIGKILL)
        return real_step(self)
    trainer.Trainer.train_step = step_then_kill
else:
    counted = half_then_kill(checkpoint.save_file)
    checkpoint.save_file = matching(checkpoint.save_file)

from minildm.app.cli import main
sys.exit(main(sys.argv[3:]))
"""

TINY = ("--profile", "tiny", "--seed", "0")


def minildm(*args: str, tmp_path: Path, kill_at: tuple[str, int] | None = None) -> subprocess.CompletedProcess:
    environment = {**os.environ, "MINILDM_DATA_DIR": str(tmp_path / "data"), "MINILDM_PROFILE": "tiny"}
    command = [sys.executable, "-c", LAUNCHER, *map(str, kill_at), *args] if kill_at else \
        [sys.executable, "-m", "minildm", *args]
    return subprocess.run(command, capture_output=True, text=True, env=environment, timeout=300)


def train_ae(out: Path, tmp_path: Path, kill_at=None):
    return minildm("train-ae", "--n", "48", "--steps", "10", "--out", out, *TINY, tmp_path=tmp_path, kill_at=kill_at)


def train_ldm(ae: Path, out: Path, tmp_path: Path, kill_at=None):
    return minildm("train-ldm", "--ae", ae, "--steps", "10", "--out", out, *TINY, tmp_path=tmp_path, kill_at=kill_at)


def tensors(path: Path) -> dict[str, torch.Tensor]:
    return ckpt.load(path)[0]


def assert_same_files(run: Path, reference: Path, names=("checkpoint.safetensors", "weights.safetensors")):
    for name in names:
        ours, theirs = tensors(run / name), tensors(reference / name)
        assert ours.keys() == theirs.keys()
        different = [key for key in ours if not torch.equal(ours[key], theirs[key])]
        assert different == [], f"{name}: {different[:5]}"


@pytest.fixture(scope="module")
def references(tmp_path_factory):
    """An autoencoder and an LDM trained without interruption (checkpoints every 2 steps)."""
    folder = tmp_path_factory.mktemp("reference")
    ae, ldm = folder / "ae", folder / "ldm"
    for result in (train_ae(ae, folder), train_ldm(ae, ldm, folder)):
        assert result.returncode == 0, result.stderr
    return folder, ae, ldm


def assert_killed_then_resumes(result, run: Path, reference: Path, rerun, had_checkpoint: bool):
    assert result.returncode == -signal.SIGKILL, result.stderr
    if had_checkpoint:
        ckpt.load(run / "checkpoint.safetensors")  # whole: the half-written file was a temporary
    else:
        assert not (run / "checkpoint.safetensors").exists()
    left_behind = list(run.glob(".*.tmp"))
    again = rerun()
    assert again.returncode == 0, again.stderr
    assert_same_files(run, reference)
    assert not any(path.exists() for path in left_behind)  # the killed process's temporaries are cleaned up
    assert list(run.glob(".*.tmp")) == []


@pytest.mark.parametrize("kill_at, had_checkpoint", [
    (("step", 5), True),  # in the middle of step 5; checkpoints were written after steps 2 and 4
    (("checkpoint.safetensors", 3), True),  # writing the third checkpoint (step 6)
    (("weights.safetensors", 2), True),  # writing the sampling weights after the second checkpoint
    (("checkpoint.safetensors", 1), False),  # writing the very first one
])
def test_a_killed_autoencoder_run_resumes_to_the_same_weights(references, tmp_path, kill_at, had_checkpoint):
    _, reference, _ = references
    run = tmp_path / "ae"
    killed = train_ae(run, tmp_path, kill_at=kill_at)
    assert_killed_then_resumes(killed, run, reference, lambda: train_ae(run, tmp_path), had_checkpoint)


@pytest.mark.parametrize("kill_at, had_checkpoint", [
    (("latents.safetensors", 1), False),  # writing the latent cache, before the first step
    (("step", 7), True),
    (("checkpoint.safetensors", 2), True),
])
def test_a_killed_ldm_run_resumes_to_the_same_weights(references, tmp_path, kill_at, had_checkpoint):
    _, ae, reference = references
    run = tmp_path / "ldm"
    killed = train_ldm(ae, run, tmp_path, kill_at=kill_at)
    assert_killed_then_resumes(killed, run, reference, lambda: train_ldm(ae, run, tmp_path), had_checkpoint)
    assert_same_files(run, reference, names=("latents.safetensors",))


def test_two_processes_with_the_same_seed_give_the_same_weights_samples_and_metrics(references, tmp_path):
    folder, ae, ldm = references
    again = tmp_path / "ae"
    assert train_ae(again, tmp_path).returncode == 0
    assert_same_files(again, ae)
    grids, metrics = [], []
    for attempt in range(2):
        grid = tmp_path / f"samples{attempt}.png"
        result = minildm("sample", "--ldm", ldm, "--n", "8", "--steps", "5", "--out", grid, *TINY, tmp_path=folder)
        assert result.returncode == 0, result.stderr
        grids.append(grid.read_bytes())
        result = minildm("evaluate", "--ae", ae, "--n", "16", *TINY, tmp_path=folder)
        assert result.returncode == 0, result.stderr
        metrics.append(json.loads(result.stdout))
    assert grids[0] == grids[1]
    assert metrics[0] == metrics[1] and metrics[0]["psnr"] > 0


def test_a_damaged_tampered_foreign_or_newer_checkpoint_gives_one_line(references, tmp_path):
    """``evaluate --ae`` on a copy of the reference autoencoder whose weights file was changed."""
    import shutil

    from safetensors.torch import save_file

    folder, ae, _ = references
    weights = tensors(ae / "weights.safetensors")
    cases = {
        "truncated": lambda path: path.write_bytes(path.read_bytes()[: path.stat().st_size // 2]),
        "tampered header": lambda path: path.write_bytes(b"\xff" * 8 + path.read_bytes()[8:]),
        "another configuration": lambda path: save_file(
            {**weights, "autoencoder.encoder.conv_in.weight": torch.zeros(3, 3, 3, 3)}, str(path),
            metadata=ckpt.stamped_metadata({"step": 0})),
        "a foreign file": lambda path: save_file(weights, str(path)),
        "a newer minildm": lambda path: save_file(weights, str(path), metadata={
            "written_by": json.dumps({"minildm": "9.0.0", "format": 99})}),
    }
    messages = {"truncated": "is damaged", "tampered header": "is damaged",
                "another configuration": "was made with a different configuration: "
                                         "encoder.conv_in.weight has shape (3, 3, 3, 3) there",
                "a foreign file": "has no written_by stamp: minildm did not write it",
                "a newer minildm": "was written by minildm 9.0.0 in file format 99; this is minildm"}
    for case, change in cases.items():
        run = tmp_path / case.replace(" ", "-")
        shutil.copytree(ae, run)
        change(run / "weights.safetensors")
        result = minildm("evaluate", "--ae", run, *TINY, tmp_path=folder)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 1 and len(lines) == 1, (case, result.stderr)
        assert lines[0].startswith("minildm: error: ") and messages[case] in lines[0], (case, lines[0])
    stamp = ckpt.load(ae / "weights.safetensors")[1]
    assert "written_by" not in stamp and set(stamp) >= {"step"}  # the stamp is checked, then set aside
