"""The command line: summaries, figures, and one clear line on bad input."""

import json
import os
import shutil
import subprocess
import sys

import pytest
from PIL import Image

from minildm.app import evaluate_command
from minildm.evaluation import part_scores
from minildm.evaluation.segmenter import PartSegmenter, ToyFaceSegmenter
from minildm.app.cli import main
from minildm.app.part_inputs import write_part_map
from minildm.config import data_dir
from minildm.data.toyface_parts import generate_parts
from minildm.evaluation.judge import OUTPUTS, AttributeClassifier, ToyFaceJudge

pytestmark = pytest.mark.integration  # trains models or runs whole commands: `make unit` leaves this file out


def run_minildm(*args, tmp_path, timeout=120, **env):
    environment = {**os.environ, "MINILDM_DATA_DIR": str(tmp_path / "data"), **env}
    return subprocess.run([sys.executable, "-m", "minildm", *args], capture_output=True,
                          text=True, env=environment, timeout=timeout)


def test_data_command_prints_a_summary_and_writes_a_grid(tmp_path):
    grid = tmp_path / "grid.png"
    result = run_minildm("data", "--dataset", "toyfaces", "--resolution", "32", "--n", "40",
                         "--grid", str(grid), tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "40 images of 32x32 px from toyfaces" in result.stdout
    assert "attribute frequencies:" in result.stdout and "Eyeglasses" in result.stdout
    assert "images/s" in result.stdout and "cached at $MINILDM_DATA_DIR/cache/" in result.stdout  # no machine path
    assert Image.open(grid).size == (2 * 8 * 34, 2 * 5 * 34)  # 8 x 5 tiles of 32 px + 1 px gaps, x2

    again = run_minildm("data", "--dataset", "toyfaces", "--resolution", "32", "--n", "40",
                        tmp_path=tmp_path)
    assert "(loaded from cache)" in again.stdout


def test_help_opens_with_plain_words_and_lists_the_commands_in_order(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "``" not in text and "minildm: latent diffusion" in text  # plain words, not a docstring
    listed = [line.split()[0] for line in text.splitlines() if line.startswith("    ") and line[4] != " "]
    assert listed[:5] == ["data", "train-ae", "train-ldm", "sample", "evaluate"]


def test_bad_input_in_a_new_process_gives_one_line_and_status_1(tmp_path):
    """What a shell sees: exit status 1 and one line on stderr, no traceback (the hub refused
    at once through an address nothing listens on)."""
    result = run_minildm("data", "--dataset", "celeba-hq", "--n", "8", tmp_path=tmp_path, HF_ENDPOINT="http://127.0.0.1:9")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert result.stderr.startswith("minildm: error: cannot reach the Hugging Face hub")
    assert "Traceback" not in result.stderr + result.stdout


@pytest.mark.parametrize("args, message", [
    (["data", "--dataset", "no/such/folder"], "minildm: error: no such file or folder: no/such/folder"),
    (["data", "--resolution", "2"], "minildm: error: resolution must be a whole number of pixels"),
    (["bench", "--profile", "tiny", "--resolutions", "32,36"], "minildm: error: resolution 36 does not suit f = 4"),
])
def test_bad_input_gives_one_line_and_status_1(tmp_path, monkeypatch, capsys, args, message):
    monkeypatch.setenv("MINILDM_DATA_DIR", str(tmp_path / "data"))
    assert main(args) == 1  # in-process: the same main() as python -m minildm, without the start-up
    captured = capsys.readouterr()
    assert captured.err.strip().splitlines() == [captured.err.strip()] and captured.err.startswith(message)
    assert "Traceback" not in captured.err + captured.out


def test_bench_prints_the_table_and_keeps_it_with_a_plot(tmp_path):
    out = tmp_path / "bench"
    result = run_minildm("bench", "--profile", "tiny", "--resolutions", "32", "--factors", "1,4", "--batch", "4",
                         "--repeats", "1", "--warmup", "0", "--steps", "2", "--out", str(out), tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr
    rows = [line for line in result.stdout.splitlines() if line.startswith("| ")]
    assert len(rows) == 3 and rows[1].startswith("| pixel DM (f=1) | 32 | 3x32x32 |") and "| LDM-4 | 32 | 4x8x8 |" in rows[2]
    assert (out / "bench.md").read_text().count("\n| ") == 3
    numbers = json.loads((out / "bench.json").read_text())["results"]
    assert [row["factor"] for row in numbers] == [1, 4] and all(row["train_images_per_s"] > 0 for row in numbers)
    assert Image.open(out / "bench.png").size[0] > 0


def test_unknown_profile_is_refused_by_the_parser(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["data", "--profile", "huge"])
    assert exit_info.value.code == 2 and "invalid choice: 'huge'" in capsys.readouterr().err


@pytest.mark.slow
def test_demo_trains_both_stages_and_writes_samples_and_metrics(tmp_path):
    out = tmp_path / "demo"
    result = run_minildm("demo", "--profile", "tiny", "--out", str(out), tmp_path=tmp_path, timeout=600)
    assert result.returncode == 0, result.stderr
    assert "profile 'tiny'" in result.stdout and "done in" in result.stdout
    assert Image.open(out / "samples.png").size == (2 * 8 * 34, 2 * 8 * 34)  # 8 x 8 samples of 32 + 2 px
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["autoencoder"]["n_images"] == 128 and metrics["autoencoder"]["psnr"] > 10
    assert metrics["ldm"]["fid"] > 0 and metrics["ldm"]["n_samples"] == 5
    quality = metrics["quality"]  # 128 samples and 128 + 128 held-out faces
    assert quality["n"] == 128 and quality["rows"]["real vs real (floor)"]["precision"] > 0.5
    assert 0 < quality["data"]["saturation"] < 1 and "face" in quality["rows"]["samples"]["attributes"]
    assert metrics["ldm"]["sampler"] == quality["sampler"] == "DPM-Solver++(2M) 6 steps"  # demo.DEMO_SAMPLER
    assert "stage 1 costs" in result.stdout and "Precision" in result.stdout  # the reading of the numbers
    assert {"config.json", "weights.safetensors"} <= {p.name for p in (out / "ldm").iterdir()}


def test_train_ldm_sample_and_evaluate_from_the_command_line(tmp_path, capsys, monkeypatch):
    """The stages one after another: train-ae in a new process, as a shell runs it, then the
    others in-process (the same main(), without a torch start-up each)."""
    ae, ldm = tmp_path / "ae", tmp_path / "ldm"
    common = ("--profile", "tiny")
    result = run_minildm("train-ae", *common, "--n", "48", "--steps", "4", "--out", str(ae), tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr
    monkeypatch.setenv("MINILDM_DATA_DIR", str(tmp_path / "data"))
    assert main(["train-ldm", *common, "--ae", str(ae), "--steps", "3", "--out", str(ldm)]) == 0
    out = capsys.readouterr().out
    assert "trained in" in out and "MFLOPs per forward pass on latents (4, 8, 8)" in out

    grid = tmp_path / "samples.png"
    assert main(["sample", *common, "--ldm", str(ldm), "--n", "3", "--steps", "2", "--out", str(grid)]) == 0
    assert Image.open(grid).size == (2 * 8 * 34, 2 * 34)  # one row of 8 tiles, 3 filled

    monkeypatch.setenv("MINILDM_DATA_DIR", str(data_dir()))  # the usual data folder, where the judge is cached
    capsys.readouterr()
    assert main(["evaluate", *common, "--ldm", str(ldm), "--n", "8"]) == 0
    captured = capsys.readouterr()
    metrics = json.loads(captured.out)
    assert metrics["n_samples"] == 8 and "held-out images of toyfaces" in metrics["data"]
    quality = metrics["quality"]  # 8 samples against 8 held-out faces, 8 more for the floor and the ceiling
    assert quality["n"] == 8 and set(quality["rows"]) == {"real vs real (floor)", "autoencoder (ceiling)", "samples"}
    assert "autoencoder (ceiling)" in captured.err and 0 <= quality["rows"]["samples"]["recall"] <= 1
    assert metrics["fid"] > 0 and metrics["toyface_fid"] > 0 and metrics["toyface_kid_std"] >= 0
    assert metrics["n_floor"] == 8 and metrics["fid_floor"] >= 0 and metrics["toyface_kid_floor"] is not None
    assert metrics["toyface_features"].startswith("toy-face judge, 64-d")

    from_python = tmp_path / "ae-from-python"  # what a notebook writes: no data_description
    shutil.copytree(ae, from_python)
    config = json.loads((from_python / "config.json").read_text())
    (from_python / "config.json").write_text(json.dumps({**config, "data": {}}))
    for args, message in [  # in-process: the same main() as python -m minildm, without the start-up
        (("train-ldm", "--ae", str(from_python), "--out", str(tmp_path / "x")), "does not record the data"),
        (("evaluate", "--ae", str(from_python)), "does not record the data"),
        (("sample", "--ldm", str(ae), "--out", str(grid)), "not a latent diffusion model"),
        (("sample", "--ldm", str(tmp_path / "none"), "--out", str(grid)), "no config.json"),
        (("sample", "--ldm", str(ldm), "--steps", "5000", "--out", str(grid)), "steps must be between 1 and 1000"),
        (("train-ldm", "--ae", str(ldm), "--out", str(tmp_path / "x")), "not an autoencoder"),
    ]:
        assert main([*args, *common]) == 1
        stderr = capsys.readouterr().err
        assert stderr.startswith("minildm: error: ") and stderr.count("\n") == 1 and message in stderr, stderr


def test_a_folder_smaller_than_the_profile_keeps_a_held_out_tenth_for_evaluate(tmp_path, capsys):
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(20):  # the tiny profile asks for 512
        Image.new("RGB", (40, 40), (12 * i, 100, 255 - 12 * i)).save(folder / f"{i:02d}.png")
    ae = tmp_path / "ae"
    common = ("--profile", "tiny", "--seed", "0")
    assert main(["train-ae", "--dataset", str(folder), "--steps", "2", "--out", str(ae), *common]) == 0
    assert "has 20 usable images, fewer than the profile's 512: training on the first 18, holding out the last 2" \
        in capsys.readouterr().out
    assert json.loads((ae / "config.json").read_text())["data"]["n"] == 18
    assert main(["evaluate", "--ae", str(ae), *common]) == 0
    assert "2 held-out images of " in json.loads(capsys.readouterr().out)["data"]

    everything = tmp_path / "ae-all"  # --n takes every image: nothing is left, and the error says so
    assert main(["train-ae", "--dataset", str(folder), "--n", "20", "--steps", "2", "--out", str(everything),
                 *common]) == 0
    capsys.readouterr()
    assert main(["evaluate", "--ae", str(everything), *common]) == 1
    error = capsys.readouterr().err.strip().splitlines()[-1]  # after the progress bar of the search
    assert error.startswith("minildm: error: no held-out images in ") and "after the 20 that" in error
    assert error.endswith("train on fewer with --n")

    lonely = tmp_path / "one"
    lonely.mkdir()
    Image.new("RGB", (40, 40)).save(lonely / "only.png")
    assert main(["train-ae", "--dataset", str(lonely), "--out", str(tmp_path / "x"), *common]) == 1
    assert "has 1 usable image: training needs at least 2" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_conditional_models_from_the_command_line(tmp_path, capsys, monkeypatch):
    """Attribute, text, inpainting and super-resolution models: train, sample, evaluate, and
    the one-line errors of their options (in-process, for speed)."""
    common = ("--profile", "tiny")
    ae = tmp_path / "ae"
    assert main(["train-ae", *common, "--n", "48", "--steps", "2", "--out", str(ae)]) == 0
    for kind in ("attributes", "text", "inpaint", "superres", "semantic", "layout"):
        assert main(["train-ldm", *common, "--ae", str(ae), "--cond", kind, "--steps", "2",
                     "--out", str(tmp_path / kind)]) == 0
    face = tmp_path / "face.png"
    Image.new("RGB", (64, 64), (200, 150, 120)).save(face)
    mask = tmp_path / "mask.png"
    Image.new("L", (64, 64), 0).save(mask)
    Image.new("L", (64, 64), 255).save(tmp_path / "hole.png")  # a mask covers its image pixel for pixel
    grid = tmp_path / "grid.png"
    part_map = generate_parts(1, resolution=64, seed=3)[2][0]  # a face drawn at twice the training size
    write_part_map(part_map, tmp_path / "map.png")
    for kind, options in [("semantic", ["--map", str(tmp_path / "map.png"), "--scale", "2"]),
                          ("layout", ["--layout", '{"skin": [0.3, 0.3, 0.7, 0.8], "hat": [0.2, 0.0, 0.8, 0.3]}']),
                          ("superres", ["--scale", "1", "--upscale", str(face)])]:
        capsys.readouterr()
        assert main(["sample", *common, "--ldm", str(tmp_path / kind), "--n", "3", "--steps", "2", *options,
                     "--out", str(grid)]) == 0, capsys.readouterr().err
        tile = 2 * ((64 if kind == "semantic" else 32) + 2)  # a pixel of white around each image, doubled
        assert Image.open(grid).size == (8 * tile, tile)  # one row (semantic, superres: the input first)
    for kind, options in [("attributes", ["--attributes", "Smiling,Eyeglasses", "--guidance", "2"]),
                          ("text", ["--prompt", "a smiling face with blond hair"]),
                          ("inpaint", ["--inpaint", str(face), "--mask", str(tmp_path / "hole.png")]),
                          ("superres", ["--upscale", str(face)])]:
        capsys.readouterr()
        assert main(["sample", *common, "--ldm", str(tmp_path / kind), "--n", "3", "--steps", "2", *options,
                     "--out", str(grid)]) == 0, capsys.readouterr().err
        assert Image.open(grid).size == (2 * 8 * 34, 2 * 34)  # one row (inpaint, superres: the input first)
        assert "3 samples" in capsys.readouterr().out

    untrained_reader = ToyFaceSegmenter(PartSegmenter(), {}, 0.0)  # reads something: training it takes 1.5 min
    monkeypatch.setattr(part_scores, "load_segmenter", lambda: untrained_reader)
    for kind in ("semantic", "layout"):
        capsys.readouterr()
        assert main(["evaluate", *common, "--ldm", str(tmp_path / kind), "--n", "8"]) == 0
        metrics = json.loads(capsys.readouterr().out)
        assert metrics["n_samples"] == 8 and ("unconditional" in metrics) == (kind == "layout")
        assert all(0 <= metrics[key] <= 1 for key in ("asked", "shuffled", "segmenter_on_real"))

    capsys.readouterr()
    assert main(["evaluate", *common, "--ldm", str(tmp_path / "superres"), "--n", "8"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["n_images"] == 8 and metrics["factor"] == 4 and "psnr_bicubic" in metrics

    untrained = ToyFaceJudge(AttributeClassifier(len(OUTPUTS)), {})  # reads something: training it takes a minute
    monkeypatch.setattr(evaluate_command, "load_judge", lambda: untrained)
    assert main(["evaluate", *common, "--ldm", str(tmp_path / "attributes"), "--n", "32"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["n_samples"] == 32 and metrics["pairs"] == 320
    for key in ("accuracy", "balanced_agreement", "balanced_agreement_shuffled", "balanced_agreement_unconditional",
                "accuracy_unconditional", "judge_balanced_accuracy_on_real"):
        assert 0 <= metrics[key] <= 1, key
    rates = metrics["per_attribute_rates"]
    for row in rates.values():
        assert row["asked_on"] + row["asked_off"] == 32
        assert ("true_positive_rate" in row) == (row["asked_on"] > 0 and row["asked_off"] > 0)
    assert any("true_negative_rate" in row for row in rates.values())
    assert set(metrics["judge_per_attribute_on_real"]) == set(rates)

    for args, message in [
        (("sample", "--ldm", str(tmp_path / "text"), "--prompt", "a purple face"), "unknown word(s) 'purple'"),
        (("sample", "--ldm", str(tmp_path / "attributes"), "--attributes", "Wings"), "unknown attribute(s) Wings"),
        (("sample", "--ldm", str(tmp_path / "attributes"), "--prompt", "a face"), "use --attributes"),
        (("sample", "--ldm", str(tmp_path / "inpaint")), "needs --inpaint IMAGE"),
        (("sample", "--ldm", str(tmp_path / "inpaint"), "--inpaint", str(face), "--mask", str(mask)),
         "black everywhere"),
        (("sample", "--ldm", str(tmp_path / "superres"), "--upscale", str(tmp_path / "nope.png")), "no such file"),
        (("train-ldm", "--ae", str(ae), "--cond", "class", "--attributes", "Smiling", "--out", str(tmp_path / "c")),
         "--attributes applies to --cond attributes"),
    ]:
        assert main([*args, *common, "--out", str(grid)] if args[0] == "sample" else [*args, *common]) == 1
        stderr = capsys.readouterr().err
        assert stderr.startswith("minildm: error: ") and stderr.count("\n") == 1 and message in stderr, stderr


def test_a_request_names_each_attribute_once_and_a_prompt_needs_a_word():
    """``sample --attributes`` and ``--prompt`` (an attribute model is not among test_bad_input's runs)."""
    import torch

    from minildm.app.options import requested_condition
    from minildm.conditioning import ConditioningConfig, WordTokenizer
    from minildm.config import MinildmError

    attributes = ConditioningConfig(kind="attributes", attribute_names=["Smiling", "Eyeglasses", "Bald"])
    assert requested_condition(attributes, "Bald, Smiling").tolist() == [[True, False, True]]
    with pytest.raises(MinildmError, match="attribute.s. Smiling given more than once in 'Smiling,Bald,Smiling'"):
        requested_condition(attributes, "Smiling,Bald,Smiling")
    text = ConditioningConfig(kind="text", vocabulary=["a", "face", "smiling"], max_length=4)
    tokenizer = WordTokenizer(text.vocabulary)
    assert torch.equal(requested_condition(text, "a smiling face \U0001F600"),
                       tokenizer.encode(["a smiling face"], 4))  # symbols between the words are not words
    for no_words in ("\U0001F600", "!? 42", "\u00e9\u00e9"):
        with pytest.raises(MinildmError, match="empty request"):
            requested_condition(text, no_words)
