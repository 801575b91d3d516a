"""A run folder's ``config.json`` is checked at every depth before anything is built from it.

Each case takes the ``config.json`` of a real run folder (a tiny autoencoder or LDM trained by
the command line), spoils one value, and expects loading to refuse it with a CheckpointError whose
one line names the file and the key path; the command line then exits with that one line."""

import json
import shutil
from pathlib import Path

import pytest

from minildm import checkpoint as ckpt
from minildm.app.cli import main
from minildm.autoencoder import AutoencoderConfig
from minildm.autoencoder_training import load_autoencoder
from minildm.conditioning import ConditioningConfig
from minildm.diffusion import DiffusionConfig
from minildm.ldm import LDMConfig
from minildm.ldm_training import load_ldm
from minildm.losses import LossConfig
from minildm.unet import UNetConfig

DEEP = 100_000  # lists nested this deep make json.loads recurse past Python's limit
LOADERS = {"ae": load_autoencoder, "ldm": load_ldm}


def setting(*path_and_value):
    """An edit of the parsed config: the value at the key path (the last argument) replaced."""
    *path, key, value = path_and_value

    def edit(config: dict) -> None:
        for part in path:
            config = config[part]
        config[key] = value

    return edit


def nested(depth: int) -> list:
    value = []
    for _ in range(depth):
        value = [value]
    return value


CASES = [  # (run folder, edit of its config.json or the file's whole text, words the message must hold)
    ("ae", setting("data", "n", "32"), "data.n must be a whole number of 1 or more, got '32'"),
    ("ae", setting("data", None), "data must be a JSON object, got None"),
    ("ae", setting("data", "dataset", 123), "data.dataset must be a string, got 123"),
    ("ae", setting("data", "resolution", -32), "data.resolution must be a whole number from 8 to 1024, got -32"),
    ("ae", setting("data", "seed", True), "data.seed must be a whole number of 0 or more, got True"),
    ("ae", setting("data", "split", ["train"]), "data.split must be a string, got ['train']"),
    ("ae", setting("data", "colour", "red"), "data has an unknown key 'colour'"),
    ("ae", lambda config: config["data"].pop("start"), "data has no key 'start'"),
    ("ae", '{"stage": "autoencoder", "data": ' + "[" * DEEP + "]" * DEEP + "}", "is damaged (nested too deeply"),
    ("ae", "[1, 2, 3]", "is damaged (not a JSON object)"),
    ("ae", setting("stage", nested(500)), "holds a [[[...]]] run, not an autoencoder"),
    ("ae", setting("autoencoder", "factor", "4"), "autoencoder.factor must be a whole number of 0 or more, got '4'"),
    ("ae", setting("autoencoder", "base_channels", [16]), "autoencoder.base_channels must be a whole number"),
    ("ae", setting("autoencoder", "base_channels", -16), "autoencoder.base_channels must be a whole number of 0 "
                                                         "or more, got -16"),
    ("ae", setting("autoencoder", "patch_size", True), "autoencoder.patch_size must be a whole number"),
    ("ae", setting("autoencoder", "attention", 0), "autoencoder.attention must be true or false, got 0"),
    ("ae", setting("autoencoder", "reg", nested(500)), "autoencoder.reg must be a string, got [[[...]]]"),
    ("ae", setting("autoencoder", "factor", 3), "autoencoder: autoencoder factor must be 4, 8 or 16, got 3"),
    ("ae", setting("autoencoder", None), "autoencoder must be a JSON object, got None"),
    ("ae", setting("loss", "kl_weight", float("nan")), "loss.kl_weight must be a finite number, got nan"),
    ("ae", setting("loss", "disc_weight", float("inf")), "loss.disc_weight must be a finite number, got inf"),
    ("ldm", setting("data", "resolution", "32"), "data.resolution must be a whole number from 8 to 1024, got '32'"),
    ("ldm", setting("model", "unet", "width", 3), "unknown key 'width' in model.unet"),
    ("ldm", setting("model", "unet", "channel_mult", [1, "2"]), "model.unet.channel_mult[1] must be a whole number"),
    ("ldm", setting("model", "unet", "attention_levels", 1), "model.unet.attention_levels must be a list, got 1"),
    ("ldm", setting("model", "unet", "context_channels", 2.5), "model.unet.context_channels must be a whole number"),
    ("ldm", setting("model", "diffusion", "min_snr_gamma", "5"), "model.diffusion.min_snr_gamma must be a finite "
                                                                 "number, got '5'"),
    ("ldm", setting("model", "autoencoder", "latent_channels", None), "model.autoencoder.latent_channels must be"),
    ("ldm", setting("model", "conditioning", "class_names", [1]), "model.conditioning.class_names[0] must be a string"),
    ("ldm", setting("model", "conditioning", "kind", "colour"), "model.conditioning: unknown conditioning 'colour'"),
]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """A tiny autoencoder and an unconditional LDM on it, trained by the command line."""
    tmp = tmp_path_factory.mktemp("runs")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MINILDM_DATA_DIR", str(tmp_path_factory.mktemp("data")))
        common = ["--profile", "tiny", "--steps", "2"]
        assert main(["train-ae", *common, "--n", "32", "--out", str(tmp / "ae")]) == 0
        assert main(["train-ldm", *common, "--ae", str(tmp / "ae"), "--out", str(tmp / "ldm")]) == 0
    return {"ae": tmp / "ae", "ldm": tmp / "ldm"}


def spoiled(runs: dict[str, Path], kind: str, edit, tmp_path: Path) -> Path:
    """A copy of the run folder ``kind`` whose config.json has had ``edit`` (a function of the
    parsed config, or the file's new text)."""
    run_dir = tmp_path / kind
    shutil.copytree(runs[kind], run_dir)
    if isinstance(edit, str):
        (run_dir / "config.json").write_text(edit)
    else:
        config = json.loads((run_dir / "config.json").read_text())
        edit(config)
        (run_dir / "config.json").write_text(json.dumps(config))
    return run_dir


def read_all(run_dir: Path, kind: str) -> None:
    """What the commands read of a run folder: the model, then the data it was trained on."""
    LOADERS[kind](run_dir)
    ckpt.read_training_data(run_dir)


@pytest.mark.integration
def test_the_run_folders_as_written_load(runs):
    for kind, run_dir in runs.items():
        read_all(run_dir, kind)
        assert ckpt.read_training_data(run_dir) == json.loads((run_dir / "config.json").read_text())["data"]


@pytest.mark.integration
@pytest.mark.parametrize("kind, edit, words", CASES, ids=[case[2][:60] for case in CASES])
def test_a_wrong_value_anywhere_is_refused_in_one_line_naming_it(runs, tmp_path, kind, edit, words):
    run_dir = spoiled(runs, kind, edit, tmp_path)
    with pytest.raises(ckpt.CheckpointError) as refused:
        read_all(run_dir, kind)
    message = str(refused.value)
    assert words in message and str(run_dir) in message and "\n" not in message, message
    assert len(message) < 300  # a value is shown cut short, however long or deep


@pytest.mark.integration
def test_a_whole_number_where_a_float_is_saved_still_loads(runs, tmp_path):
    run_dir = spoiled(runs, "ae", setting("autoencoder", "vq_beta", 1), tmp_path)
    assert load_autoencoder(run_dir).config.vq_beta == 1.0


@pytest.mark.integration
@pytest.mark.parametrize("command, kind, edit, words", [
    ("evaluate --ae {run}", "ae", setting("data", "n", "32"), "data.n must be a whole number"),
    ("train-ldm --ae {run} --out {out}", "ae", setting("data", "dataset", 123), "data.dataset must be a string"),
    ("sample --ldm {run} --out {out}.png", "ldm", setting("data", "resolution", -32), "data.resolution must be"),
    ("export --ldm {run} --out {out}", "ldm", setting("data", "resolution", "32"), "data.resolution must be"),
    ("evaluate --ldm {run}", "ldm", setting("model", "unet", "res_blocks", False), "model.unet.res_blocks must be"),
])
def test_commands_refuse_a_spoiled_config_in_one_line(runs, tmp_path, capsys, command, kind, edit, words):
    run_dir = spoiled(runs, kind, edit, tmp_path)
    out = tmp_path / "out"
    arguments = command.format(run=run_dir, out=out).split() + ["--profile", "tiny"]
    capsys.readouterr()
    assert main(arguments) == 1
    err = capsys.readouterr().err
    assert err.startswith("minildm: error: ") and err.count("\n") == 1 and words in err, err
    assert not list(tmp_path.glob("out*"))


@pytest.mark.parametrize("config", [
    AutoencoderConfig(reg="vq", factor=8), LossConfig(),
    LDMConfig(unet=UNetConfig(context_channels=16), diffusion=DiffusionConfig(min_snr_gamma=5.0),
              conditioning=ConditioningConfig(kind="class", class_names=["cat", "dog"]))])
def test_every_saved_config_reads_back_from_json_as_it_was(config):
    assert type(config).from_dict(json.loads(json.dumps(config.to_dict()))) == config
