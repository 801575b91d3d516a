"""The command line: summaries, figures, and one clear line on bad input."""

import os
import subprocess
import sys

import pytest
from PIL import Image


def run_minildm(*args, tmp_path, **env):
    environment = {**os.environ, "MINILDM_DATA_DIR": str(tmp_path / "data"), **env}
    return subprocess.run([sys.executable, "-m", "minildm", *args], capture_output=True,
                          text=True, env=environment, timeout=120)


def test_data_command_prints_a_summary_and_writes_a_grid(tmp_path):
    grid = tmp_path / "grid.png"
    result = run_minildm("data", "--dataset", "toyfaces", "--resolution", "32", "--n", "40",
                         "--grid", str(grid), tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "40 images of 32x32 px from toyfaces" in result.stdout
    assert "attribute frequencies:" in result.stdout and "Eyeglasses" in result.stdout
    assert "images/s" in result.stdout and str(tmp_path / "data" / "cache") in result.stdout
    assert Image.open(grid).size == (2 * 8 * 34, 2 * 5 * 34)  # 8 x 5 tiles of 32 px + 1 px gaps, x2

    again = run_minildm("data", "--dataset", "toyfaces", "--resolution", "32", "--n", "40",
                        tmp_path=tmp_path)
    assert "(loaded from cache)" in again.stdout


@pytest.mark.parametrize("args, message", [
    (["data", "--dataset", "no/such/folder"], "minildm: error: no such file or folder: no/such/folder"),
    (["data", "--dataset", "celeba-hq", "--n", "8"], "minildm: error: cannot reach the Hugging Face hub"),
    (["data", "--resolution", "2"], "minildm: error: resolution must be a whole number of pixels"),
])
def test_bad_input_gives_one_line_and_status_1(tmp_path, args, message):
    result = run_minildm(*args, tmp_path=tmp_path, HF_ENDPOINT="http://127.0.0.1:9")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert result.stderr.startswith(message)
    assert "Traceback" not in result.stderr + result.stdout


def test_unknown_profile_is_refused_by_the_parser(tmp_path):
    result = run_minildm("data", "--profile", "huge", tmp_path=tmp_path)
    assert result.returncode == 2 and "invalid choice: 'huge'" in result.stderr


def test_demo_shows_the_data(tmp_path):
    result = run_minildm("demo", "--profile", "tiny", "--out", str(tmp_path / "demo"), tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "profile 'tiny'" in result.stdout
    assert Image.open(tmp_path / "demo" / "data.png").size[0] > 0
