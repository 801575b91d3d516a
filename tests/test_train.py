"""The training loop: exact resume, Ctrl-C, atomic checkpoints, NaN, EMA, accumulation."""

import math
import os
import signal
import threading

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from minildm import checkpoint as ckpt
from minildm.checkpoint import CheckpointError
from minildm import trainer as trainer_module
from minildm.config import MinildmError
from minildm.trainer import EMA, Trainer, TrainConfig, TrainingError, autocast_dtype

DATA = {"x": torch.randn(40, 3, generator=torch.Generator().manual_seed(1))}
DATA["y"] = DATA["x"] @ torch.tensor([1.0, -2.0, 0.5]) + 0.3


def make_trainer(run_dir, steps=30, interrupt_at=None, nan_at=None, ema_decay=0.9, accumulate=1,
                 batch_size=8, checkpoint_every=10, width=16):
    model = nn.Sequential(nn.Linear(3, width), nn.Dropout(0.2), nn.ReLU(), nn.Linear(width, 1))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)

    def loss_fn(batch, step):
        if step == interrupt_at:
            os.kill(os.getpid(), signal.SIGINT)  # as if the user pressed Ctrl-C during this step
        loss = (model(batch["x"]).squeeze(1) - batch["y"]).pow(2).mean()
        if step == nan_at:
            loss = loss * float("nan")
        return {"model": loss}, {"loss": loss.item()}

    config = TrainConfig(steps=steps, batch_size=batch_size, accumulate=accumulate, ema_decay=ema_decay,
                         checkpoint_every=checkpoint_every, seed=3)
    return Trainer(run_dir, {"model": model}, optimizers={"model": optimizer}, loss_fn=loss_fn, data=DATA,
                   config=config, run_config={"width": width}, ema_of="model", progress=False)


def test_resume_after_ctrl_c_continues_exactly(tmp_path):
    torch.manual_seed(0)
    straight = make_trainer(tmp_path / "straight")
    expected = [entry["loss"] for entry in straight.fit()]

    torch.manual_seed(0)
    interrupted = make_trainer(tmp_path / "interrupted", interrupt_at=17)
    handler = signal.getsignal(signal.SIGINT)  # Python's default, or SIG_IGN in a background job
    with pytest.raises(KeyboardInterrupt, match="saved step 18"):
        interrupted.fit()
    assert ckpt.load(interrupted.checkpoint_path)[1]["step"] == 18
    assert signal.getsignal(signal.SIGINT) is handler  # the handler is restored

    torch.manual_seed(123)  # a new process: other initial weights, other random state
    resumed = make_trainer(tmp_path / "interrupted")
    history = resumed.fit()
    assert [entry["loss"] for entry in history] == expected  # bit-for-bit, dropout included
    for name, value in straight.modules["model"].state_dict().items():
        assert torch.equal(value, resumed.modules["model"].state_dict()[name])
    assert torch.equal(straight.ema["model"].module[0].weight, resumed.ema["model"].module[0].weight)


def test_training_reduces_the_loss(tmp_path):
    torch.manual_seed(0)
    history = make_trainer(tmp_path / "run", steps=200, ema_decay=None).fit()
    assert sum(e["loss"] for e in history[-20:]) < 0.1 * sum(e["loss"] for e in history[:20])


def test_crash_while_saving_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    trainer = make_trainer(tmp_path / "run", steps=10)
    trainer.fit()
    before = trainer.checkpoint_path.read_bytes()

    def crash(tensors, filename, metadata=None):
        with open(filename, "wb") as half:
            half.write(b"\x00" * 100)
        raise OSError("disk full")

    monkeypatch.setattr(ckpt, "save_file", crash)
    with pytest.raises(ckpt.CheckpointError, match="cannot write .*checkpoint.safetensors: disk full"):
        trainer.save_checkpoint()
    assert trainer.checkpoint_path.read_bytes() == before
    assert sorted(p.name for p in trainer.run_dir.iterdir()) == [
        "checkpoint.safetensors", "config.json", "weights.safetensors"]
    monkeypatch.undo()
    fresh = make_trainer(tmp_path / "run", steps=10)
    fresh.load_checkpoint()
    assert fresh.step == 10


def test_nan_loss_stops_and_names_the_last_good_checkpoint(tmp_path):
    trainer = make_trainer(tmp_path / "run", steps=30, nan_at=25)
    with pytest.raises(TrainingError, match=r"model loss became nan at step 25; the last good "
                                            r"checkpoint is .*checkpoint.safetensors \(step 20\)"):
        trainer.fit()
    assert ckpt.load(trainer.checkpoint_path)[1]["step"] == 20
    with pytest.raises(TrainingError, match="no checkpoint was saved yet"):
        make_trainer(tmp_path / "early", nan_at=2).fit()


def test_a_run_folder_of_another_configuration_is_refused(tmp_path):
    make_trainer(tmp_path / "run", steps=5).fit()
    with pytest.raises(ckpt.CheckpointError, match=r"holds a run with another configuration \(differs in: width\)"):
        make_trainer(tmp_path / "run", steps=5, width=32).fit()


def test_loading_weights_of_another_shape_names_the_tensor(tmp_path):
    small, large = nn.Linear(3, 4), nn.Linear(3, 5)
    with pytest.raises(CheckpointError, match=r"different configuration: weight has shape \(4, 3\) "
                                              r"there but \(5, 3\) here"):
        ckpt.load_weights(large, small.state_dict(), "the file")
    with pytest.raises(CheckpointError, match="1 weights missing"):
        ckpt.load_weights(small, {"weight": small.weight}, "the file")
    (tmp_path / "bad.safetensors").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="is damaged"):
        ckpt.load(tmp_path / "bad.safetensors")


def test_exclusive_lets_one_process_make_a_file_while_the_other_waits(tmp_path):
    path = tmp_path / "judge.safetensors"
    events = []

    def second():
        with ckpt.exclusive(path):
            events.append("second holds it")

    with ckpt.exclusive(path):
        waiting = threading.Thread(target=second)  # its own open file: the lock keeps it out
        waiting.start()
        waiting.join(timeout=0.5)
        events.append("first lets go")
    waiting.join(timeout=10)
    assert events == ["first lets go", "second holds it"]
    assert (tmp_path / ".judge.safetensors.lock").exists() and not path.exists()


def test_a_file_without_the_stamp_is_refused_in_one_line(tmp_path):
    tensors = {"weight": torch.ones(2)}
    save_file(tensors, str(tmp_path / "foreign.safetensors"), metadata={"step": "3"})
    with pytest.raises(CheckpointError, match=r"foreign.safetensors has no written_by stamp: minildm did not "
                                              r"write it$"):
        ckpt.load(tmp_path / "foreign.safetensors")
    ckpt.save_atomic(tensors, tmp_path / "ours.safetensors", {"step": 3})
    loaded, metadata = ckpt.load(tmp_path / "ours.safetensors")
    assert torch.equal(loaded["weight"], tensors["weight"]) and metadata == {"step": 3}


def test_ema_follows_its_formula_and_is_exported(tmp_path):
    trainer = make_trainer(tmp_path / "run", steps=1, ema_decay=0.9)
    start = trainer.ema["model"].module[0].weight.clone()
    trainer.fit()
    expected = 0.1 * start + 0.9 * trainer.modules["model"][0].weight  # decay warms up: 1/10 at step 0
    assert torch.allclose(trainer.ema["model"].module[0].weight, expected)
    assert [trainer.ema["model"].decay_at(step) for step in (0, 5, 80, 10_000)] == [0.1, 6 / 15, 0.9, 0.9]
    assert not any(p.requires_grad for p in trainer.ema["model"].module.parameters())
    exported, _ = ckpt.load(trainer.run_dir / "weights.safetensors")
    assert torch.equal(exported["model.0.weight"], trainer.ema["model"].module[0].weight)


def test_gradient_accumulation_equals_a_bigger_batch(tmp_path):
    def one_step(accumulate, batch_size):
        torch.manual_seed(0)
        trainer = make_trainer(tmp_path / f"acc{accumulate}", steps=1, accumulate=accumulate,
                               batch_size=batch_size, ema_decay=None)
        trainer.modules["model"].eval()  # no dropout: the two must see identical computations
        trainer.fit()
        return trainer.modules["model"][0].weight

    assert torch.allclose(one_step(2, 4), one_step(1, 8), atol=1e-6)


def test_every_row_is_seen_once_per_epoch(tmp_path):
    trainer = make_trainer(tmp_path / "run", batch_size=8)
    rows = torch.cat([trainer.batch(step)["x"] for step in range(5)])  # 5 x 8 = 40 = one epoch
    assert sorted(rows[:, 0].tolist()) == sorted(DATA["x"][:, 0].tolist())
    assert not torch.equal(trainer.batch(0)["x"], trainer.batch(5)["x"])  # a new order next epoch


def test_two_optimisers_only_update_their_own_parameters(tmp_path):
    generator, critic = nn.Linear(3, 1), nn.Linear(1, 1)
    config = TrainConfig(steps=1, batch_size=8, precision="fp32")  # the expected step below is fp32
    trainer = Trainer(tmp_path, {"g": generator, "c": critic},
                      optimizers={"generator": torch.optim.SGD(generator.parameters(), lr=0.1),
                                  "critic": torch.optim.SGD(critic.parameters(), lr=0.1)},
                      loss_fn=lambda batch, step: losses(batch), data=DATA, config=config, run_config={},
                      progress=False)

    def losses(batch):
        fake = generator(batch["x"])
        return {"generator": -critic(fake).mean(), "critic": critic(fake.detach()).pow(2).mean()}, {}

    batch = trainer.batch(0)
    critic_grad = torch.autograd.grad(losses(batch)[0]["critic"], critic.weight)[0]
    expected_critic = critic.weight - 0.1 * critic_grad  # the generator's loss must not add to it
    trainer.fit()
    assert torch.allclose(critic.weight, expected_critic)


def test_ema_handles_integer_buffers():
    module = nn.BatchNorm1d(2)
    ema = EMA(module, 0.5)
    module.num_batches_tracked += 3
    ema.update(module, step=100)
    assert ema.module.num_batches_tracked.item() == 3


def test_learning_rate_warms_up_then_follows_a_half_cosine(tmp_path):
    config = TrainConfig(steps=100, batch_size=4, warmup_steps=10, cosine_decay=True)
    assert config.learning_rate_scale(0) == pytest.approx(0.1 * 1.0)
    assert config.learning_rate_scale(4) == pytest.approx(0.5 * 0.5 * (1 + math.cos(math.pi * 0.04)))
    assert config.learning_rate_scale(50) == pytest.approx(0.5)
    assert config.learning_rate_scale(99) < 0.001
    assert TrainConfig(steps=100, batch_size=4).learning_rate_scale(99) == 1.0

    trainer = make_trainer(tmp_path / "run", steps=3, ema_decay=None)
    trainer.config.warmup_steps = 4
    trainer.fit()
    group = trainer.optimizers["model"].param_groups[0]
    assert group["lr"] == pytest.approx(1e-2 * 3 / 4) and group["initial_lr"] == 1e-2


def test_a_key_missing_from_the_recorded_configuration_is_named(tmp_path):
    ckpt.write_run_config(tmp_path, {"stage": "ldm", "extra": None})
    with pytest.raises(ckpt.CheckpointError, match=r"differs in: extra\)"):
        ckpt.write_run_config(tmp_path, {"stage": "ldm"})  # None against missing: still a difference


def test_precision_auto_is_bf16_only_where_the_cpu_computes_it(monkeypatch):
    cpu = torch.device("cpu")
    assert autocast_dtype(cpu, "fp32") is None and autocast_dtype(cpu, "bf16") is torch.bfloat16
    monkeypatch.setattr(trainer_module, "cpu_supports_bf16", lambda: False)
    assert autocast_dtype(cpu, "auto") is None
    monkeypatch.setattr(trainer_module, "cpu_supports_bf16", lambda: True)
    assert autocast_dtype(cpu, "auto") is torch.bfloat16
    with pytest.raises(MinildmError, match="unknown precision 'fp16'"):
        autocast_dtype(cpu, "fp16")


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_the_forward_pass_runs_in_the_chosen_precision_and_the_weights_stay_fp32(tmp_path, precision):
    model = nn.Linear(3, 1)
    seen = []

    def loss_fn(batch, step):
        output = model(batch["x"])
        seen.append(output.dtype)
        return {"model": (output.float().squeeze(1) - batch["y"]).pow(2).mean()}, {}

    trainer = Trainer(tmp_path, {"model": model}, optimizers={"model": torch.optim.SGD(model.parameters(), lr=0.1)},
                      loss_fn=loss_fn, data=DATA, config=TrainConfig(steps=2, batch_size=8, precision=precision),
                      run_config={}, progress=False)
    trainer.fit()
    assert seen == [torch.bfloat16 if precision == "bf16" else torch.float32] * 2
    assert model.weight.dtype is torch.float32 and model.weight.grad.dtype is torch.float32


def test_a_finished_run_is_refused_for_fewer_steps_and_left_as_it_was(tmp_path):
    make_trainer(tmp_path, steps=4).fit()
    kept = (tmp_path / "checkpoint.safetensors").read_bytes()
    with pytest.raises(TrainingError, match="already holds a run trained for 4 steps, more than the 2 asked for"):
        make_trainer(tmp_path, steps=2).fit()
    assert (tmp_path / "checkpoint.safetensors").read_bytes() == kept
    assert len(make_trainer(tmp_path, steps=4).fit()) == 4  # as many steps as it holds: returned as it is


def test_the_largest_seed_the_command_line_takes_trains_and_repeats(tmp_path):
    """Seeds up to 2**63 - 1 are mixed with the step into torch's range, 0 to 2**64 - 1."""
    def losses(run_dir) -> list[float]:
        torch.manual_seed(0)  # the same initial weights
        model = nn.Sequential(nn.Dropout(0.5), nn.Linear(3, 1))  # dropout draws from the step's seed

        def loss_fn(batch, step):
            loss = (model(batch["x"]).squeeze(1) - batch["y"]).pow(2).mean()
            return {"model": loss}, {"loss": loss.item()}

        trainer = Trainer(run_dir, {"model": model}, optimizers={"model": torch.optim.SGD(model.parameters(), lr=0.1)},
                          loss_fn=loss_fn, data=DATA, config=TrainConfig(steps=3, batch_size=8, seed=2**63 - 1),
                          run_config={}, progress=False)
        return [row["loss"] for row in trainer.fit()]

    first = losses(tmp_path / "a")
    assert len(first) == 3 and losses(tmp_path / "b") == first


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_weights_checkpoints_and_caches_get_the_permissions_the_umask_gives(tmp_path, umask):
    from minildm.data import cache

    previous = os.umask(umask)
    try:
        weights = ckpt.save_atomic({"w": torch.zeros(2)}, tmp_path / "weights.safetensors")
        with cache.streaming(tmp_path / "cache.safetensors") as writer:
            writer.write(torch.zeros(2, 3, 4, 4, dtype=torch.uint8))
            cached = writer.finish(tensors={}, metadata={})
        opened = tmp_path / "opened.txt"
        opened.write_text("made by open()")  # what the system gives a new file under this umask
    finally:
        os.umask(previous)
    expected = 0o666 & ~umask
    assert {path.name: path.stat().st_mode & 0o777 for path in (weights, cached, opened)} == {
        "weights.safetensors": expected, "cache.safetensors": expected, "opened.txt": expected}
