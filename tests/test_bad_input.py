"""Bad input through every command: one table, one line per case.

Each case runs ``python -m minildm`` (in process, through the same ``main``) with one wrong
value and expects a non-zero exit, exactly one line on stderr that starts with the command's
name and contains the given words, no traceback, and no file left where ``--out`` pointed.
Adding a case is adding a line to :data:`CASES`; ``{ae}``, ``{ldm}``, ``{text}``, ``{inpaint}``,
``{folder}``, ``{file}``, ``{one}``, ``{tmp}`` are filled in with run folders and paths the
module fixture makes."""

import errno
import json
import os
import shlex
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from minildm import checkpoint as ckpt
from minildm.app.cli import main
from minildm.app.part_inputs import write_part_map

pytestmark = pytest.mark.integration  # trains models or runs whole commands: `make unit` leaves this file out

CASES = [
    # data
    ("data --dataset no/such/folder", "no such file or folder"),
    ("data --dataset {file}", "is a file"),
    ("data --dataset {empty}", "no images found"),
    ("data --resolution 2", "resolution must be a whole number of pixels"),
    ("data --resolution abc", "expected a positive integer"),
    ("data --n 0", "expected a positive integer"),
    ("data --n -5", "expected a positive integer, got '-5'"),
    ("data --start -1", "expected an integer of 0 or more"),
    ("data --dataset celeba-hq --n 8", "cannot reach the Hugging Face hub"),
    ("data --dataset toyfaces --n 4 --grid {tmp}/grid.jpg", "must name a .png file"),
    ("data --dataset toyfaces --n 4 --grid {readonly}/grid.png", "cannot write in"),
    ("data --seed x", "expected a seed from 0 to 2**63 - 1, got 'x'"),
    ("data --profile huge", "invalid choice"),
    ("data --seed -1", "expected a seed from 0 to 2**63 - 1, got '-1'"),
    ("data --seed 100000000000000000000000", "expected a seed from 0 to 2**63 - 1"),
    ("data --dataset toyfaces --n 1000000000000", "would need about"),
    ("data --dataset {one} --grid {one}/grid.png", "inside the data set's folder"),
    ("data --dataset {one} --attributes {face}", "is not a CelebA attribute file: it is not text"),
    # train-ae
    ("train-ae --out {out} --factor 3", "invalid choice"),
    ("train-ae --out {out} --resolution 30", "not a multiple of the factor 4"),
    ("train-ae --out {out} --resolution 8 --factor 16", "not a multiple of the factor 16"),
    ("train-ae --out {out} --steps 0", "expected a positive integer"),
    ("train-ae --out {out} --steps -3", "expected a positive integer"),
    ("train-ae --out {out} --base-channels 0", "expected a positive integer"),
    ("train-ae --out {out} --reg gauss", "invalid choice"),
    ("train-ae --out {out} --dataset {one}", "has 1 usable image"),
    ("train-ae --out {file}", "is a file"),
    ("train-ae --out {readonly}/ae", "cannot write in"),
    ("train-ae", "the following arguments are required: --out"),
    ("train-ae --out {out} --base-channels 100000", "would need about"),
    ("train-ae --out {one}/run --dataset {one}", "inside the data set's folder"),
    ("train-ae --out {one} --dataset {one}", "inside the data set's folder"),
    ("train-ae --out {ae} --n 32 --steps 1", "already holds a run trained for 2 steps"),
    # train-ldm
    ("train-ldm --ae {tmp}/missing --out {out}", "no config.json"),
    ("train-ldm --ae {ldm} --out {out}", "not an autoencoder"),
    ("train-ldm --ae {ae} --out {out} --cond attributes --attributes Wings", "Wings"),
    ("train-ldm --ae {ae} --out {out} --attributes Smiling", "--attributes applies to --cond attributes only"),
    ("train-ldm --ae {ae} --out {out} --steps 0", "expected a positive integer"),
    ("train-ldm --ae {ae} --out {out} --n 0", "expected a positive integer"),
    ("train-ldm --ae {ae} --out {out} --cond words", "invalid choice"),
    ("train-ldm --ae {ae} --out {ae}", "holds a run with another configuration"),
    ("train-ldm --ae {ae} --out {out} --cond attributes --attributes Smiling,Smiling", "Smiling given more than once"),
    ("train-ldm --ae {ae} --out {ldm} --steps 1", "already holds a run trained for 2 steps"),
    ("train-ldm --ae {badae} --out {out}", "data.n must be a whole number of 1 or more, got '32'"),
    # sample
    ("sample --ldm {ldm} --out {tmp}/s.png --steps 5000", "steps must be between 1 and 1000"),
    ("sample --ldm {ldm} --out {tmp}/s.png --steps 0", "expected a positive integer"),
    ("sample --ldm {ldm} --out {tmp}/s.png --n 0", "expected a positive integer"),
    ("sample --ldm {ldm} --out {tmp}/s.png --eta -0.5", "expected a number from 0 to 1"),
    ("sample --ldm {ldm} --out {tmp}/s.png --eta 2", "expected a number from 0 to 1"),
    ("sample --ldm {ldm} --out {tmp}/s.jpg", "must name a .png file"),
    ("sample --ldm {ae} --out {tmp}/s.png", "not a latent diffusion model"),
    ("sample --ldm {tmp}/none --out {tmp}/s.png", "no config.json"),
    ("sample --ldm {ldm} --out {tmp}/s.png --prompt 'a face'", "--prompt does not apply to a model conditioned"),
    ("sample --ldm {text} --out {tmp}/s.png --prompt ''", "empty request"),
    ("sample --ldm {text} --out {tmp}/s.png --prompt 'zebra quantum'", "unknown word(s) 'zebra', 'quantum'"),
    ("sample --ldm {text} --out {tmp}/s.png --prompt 'smiling' --guidance -1", "guidance must be 0 or more"),
    ("sample --ldm {text} --out {tmp}/s.png --prompt 'smiling' --guidance nan", "guidance must be 0 or more"),
    ("sample --ldm {inpaint} --out {tmp}/s.png", "needs --inpaint IMAGE"),
    ("sample --ldm {inpaint} --out {tmp}/s.png --inpaint {tmp}/none.png", "no such file"),
    ("sample --ldm {inpaint} --out {tmp}/s.png --inpaint {file}", "cannot read"),
    ("sample --ldm {inpaint} --out {tmp}/s.png --inpaint {face} --mask {small_mask}", "a mask of the image's size"),
    ("sample --ldm {ldm} --out {readonly}/s.png", "cannot write in"),
    ("sample --ldm {ldm} --out {tmp}/s.png --n 1000000000", "would need about"),
    ("sample --ldm {text} --out {tmp}/s.png --prompt 'smiling' --guidance 1e308", "at most 50"),
    ("sample --ldm {text} --out {tmp}/s.png --prompt '\U0001F600'", "empty request"),
    ("sample --ldm {inpaint} --out {tmp}/s.png --inpaint {fifo} --mask {face}", "is not a regular file"),
    ("sample --ldm {badldm} --out {tmp}/s.png", "model.unet.channel_mult[1] must be a whole number"),
    ("sample --ldm {semantic} --out {tmp}/s.png", "give --map FILE"),
    ("sample --ldm {semantic} --out {tmp}/s.png --map {tmp}/none.png", "--map: no such file"),
    ("sample --ldm {semantic} --out {tmp}/s.png --map {face}", "is a RGB image: a part map is a grayscale PNG"),
    ("sample --ldm {semantic} --out {tmp}/s.png --map {map}", "draws 32 x 32 px"),
    ("sample --ldm {semantic} --out {tmp}/s.png --map {map} --scale 2", "unknown part 11 at x = 3, y = 5"),
    ("sample --ldm {semantic} --out {tmp}/s.png --map {fifo}", "is not a regular file"),
    ("sample --ldm {semantic} --out {tmp}/s.png --map {map} --scale 5", "--scale must be 1 to 4"),
    ("sample --ldm {inpaint} --out {tmp}/s.png --inpaint {face} --mask {face} --scale 2", "--scale must be 1"),
    ("sample --ldm {ldm} --out {tmp}/s.png --map {map}", "--map does not apply to a model conditioned on none"),
    ("sample --ldm {layout} --out {tmp}/s.png --layout '{{\"skin\": [0.2, 0.2, 0.8, 0.8]'", "not valid JSON"),
    ("sample --ldm {layout} --out {tmp}/s.png --layout '[1, 2]'", "no such file"),
    ("sample --ldm {layout} --out {tmp}/s.png --layout '{{\"wings\": [0, 0, 1, 1]}}'", "unknown part 'wings'"),
    ("sample --ldm {layout} --out {tmp}/s.png --layout '{{\"hat\": [0, 0, 1.5, 1]}}'", "reaches outside the image"),
    ("sample --ldm {layout} --out {tmp}/s.png --layout '{{\"hat\": [0.5, 0, 0.2, 1]}}'", "is empty"),
    ("sample --ldm {layout} --out {tmp}/s.png --layout '{{\"hat\": [0, 0, 1]}}'", "must be four numbers"),
    ("sample --ldm {layout} --out {tmp}/s.png --layout {file}", "not valid JSON"),
    # evaluate
    ("evaluate --ae {ae} --n 0", "expected a positive integer"),
    ("evaluate --ae {tmp}/none", "no config.json"),
    ("evaluate --ldm {ae}", "not a latent diffusion model"),
    ("evaluate", "one of the arguments --ae --ldm is required"),
    ("evaluate --ae {ae} --n 1000000000", "would need about"),
    ("evaluate --ae {badae}", "badae/config.json: data.n must be a whole number of 1 or more, got '32'"),
    # bench
    ("bench --resolutions 32,36", "resolution 36 does not suit f = 4"),
    ("bench --resolutions abc", "expected comma-separated integers"),
    ("bench --resolutions 32 --factors 3", "factor"),
    ("bench --batch 0", "expected a positive integer"),
    ("bench --repeats 0", "expected a positive integer"),
    ("bench --warmup -1", "expected an integer of 0 or more"),
    ("bench --resolutions 0", "resolution 0 does not suit"),
    ("bench --batch 1000000000", "would need about"),
    # export, import-ae
    ("export --ldm {text} --out {out}", "not exported"),
    ("export --ldm {ae} --out {out}", "not a latent diffusion model"),
    ("export --ldm {ldm} --out {file}", "is a file"),
    ("import-ae --diffusers {tmp}/no-vae --out {out}", "no-vae"),
    ("export --ldm {ldm} --out {out} --resolution 100000", "more than 8 times"),
    ("export --ldm {badldm} --out {out}", "model.unet.channel_mult[1] must be a whole number"),
    # course
    ("course grade {tmp}/no-submissions --out {out}", "no-submissions"),
    ("course grade {empty} --out {out} --jobs 0", "expected a positive integer"),
    ("course student {file}", "exists"),
]


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bad-input")
    common = ["--profile", "tiny"]
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MINILDM_DATA_DIR", str(tmp_path_factory.mktemp("bad-input-data")))
        yield make_paths(tmp, common)


def make_paths(tmp: Path, common: list[str]) -> dict[str, Path]:
    assert main(["train-ae", *common, "--n", "32", "--steps", "2", "--out", str(tmp / "ae")]) == 0
    for name, extra in (("ldm", []), ("text", ["--cond", "text"]), ("inpaint", ["--cond", "inpaint"]),
                        ("semantic", ["--cond", "semantic"]), ("layout", ["--cond", "layout"])):
        assert main(["train-ldm", *common, "--ae", str(tmp / "ae"), "--steps", "2", "--out", str(tmp / name),
                     *extra]) == 0
    spoiled_copy(tmp / "ae", tmp / "badae", ["data", "n"], "32")  # config.json with a wrong type
    spoiled_copy(tmp / "ldm", tmp / "badldm", ["model", "unet", "channel_mult"], [1, "2"])
    (tmp / "file.txt").write_text("not an image")
    (tmp / "empty").mkdir()
    (tmp / "one").mkdir()
    Image.new("RGB", (40, 40)).save(tmp / "one" / "only.png")
    Image.new("RGB", (32, 32), (200, 150, 120)).save(tmp / "face.png")
    Image.new("L", (16, 16), 255).save(tmp / "small_mask.png")
    os.mkfifo(tmp / "pipe.png")  # reading it would wait for a writer forever
    part_map = torch.zeros(64, 64, dtype=torch.uint8)
    part_map[5, 3] = 11  # one past the last part
    write_part_map(part_map, tmp / "map.png")

    readonly = tmp / "readonly"  # a folder nobody may write into; root may write anywhere but /sys
    readonly.mkdir()
    readonly.chmod(0o555)
    return {"tmp": tmp, "ae": tmp / "ae", "ldm": tmp / "ldm", "text": tmp / "text", "inpaint": tmp / "inpaint",
            "file": tmp / "file.txt", "empty": tmp / "empty", "one": tmp / "one", "face": tmp / "face.png",
            "small_mask": tmp / "small_mask.png", "readonly": Path("/sys") if os.geteuid() == 0 else readonly,
            "out": tmp / "out", "fifo": tmp / "pipe.png", "badae": tmp / "badae", "badldm": tmp / "badldm",
            "semantic": tmp / "semantic", "layout": tmp / "layout", "map": tmp / "map.png"}


def spoiled_copy(source: Path, target: Path, key_path: list[str], value) -> None:
    """A copy of the run folder ``source`` whose config.json holds ``value`` at ``key_path``."""
    shutil.copytree(source, target)
    config = json.loads((target / "config.json").read_text())
    section = config
    for key in key_path[:-1]:
        section = section[key]
    section[key_path[-1]] = value
    (target / "config.json").write_text(json.dumps(config))


def visible_lines(text: str) -> list[str]:
    """The lines a terminal shows: a carriage return (progress bars) starts its line again."""
    shown = (line.split("\r")[-1].strip() for line in text.split("\n"))
    return [line for line in shown if line]


def run(arguments: list[str], capsys) -> tuple[int, str]:
    capsys.readouterr()
    try:
        code = main(arguments)
    except SystemExit as exit_:  # argparse's errors
        code = exit_.code
    return code, capsys.readouterr().err


@pytest.mark.parametrize("command, words", CASES, ids=[case[0] for case in CASES])
def test_bad_input_gives_one_line_and_leaves_nothing(paths, capsys, monkeypatch, command, words):
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens: the hub is unreachable
    arguments = [part.format(**paths) for part in shlex.split(command)]
    if arguments[0] != "course" and "--profile" not in arguments:
        arguments += ["--profile", "tiny"]
    shutil.rmtree(paths["out"], ignore_errors=True)  # what an earlier case may have left
    before = sorted(paths["tmp"].rglob("*"))
    code, err = run(arguments, capsys)
    lines = visible_lines(err)
    assert code not in (0, None) and len(lines) == 1, (code, lines)
    assert lines[0].startswith("minildm") and ": error: " in lines[0] and words in lines[0], lines[0]
    assert "Traceback" not in err
    assert not paths["out"].exists()
    assert sorted(paths["tmp"].rglob("*")) == before  # no partial file anywhere


def test_the_table_has_at_least_forty_cases():
    assert len(CASES) >= 40


def test_a_full_disk_while_saving_gives_one_line_and_keeps_the_last_checkpoint(paths, capsys, monkeypatch):
    run_dir = paths["tmp"] / "full-disk"
    assert main(["train-ae", "--profile", "tiny", "--n", "32", "--steps", "2", "--out", str(run_dir)]) == 0
    kept = {name: (run_dir / name).read_bytes() for name in ("checkpoint.safetensors", "weights.safetensors")}

    def disk_full(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"\0" * 100)  # a part was written, then the disk filled up
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), filename)

    monkeypatch.setattr(ckpt, "save_file", disk_full)
    code, err = run(["train-ae", "--profile", "tiny", "--n", "32", "--steps", "4", "--out", str(run_dir)], capsys)
    lines = visible_lines(err)
    assert code == 1 and lines[-1].startswith("minildm: error: cannot write ")
    assert "No space left on device" in lines[-1]
    assert {name: (run_dir / name).read_bytes() for name in kept} == kept
    assert list(run_dir.glob(".*.tmp")) == []
