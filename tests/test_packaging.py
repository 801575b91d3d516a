"""The set-up contract: environment.yml agrees with pyproject.toml, CI runs the README's
test command, and the profile switch behaves as documented."""

import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

import pytest
import torch
import yaml

from minildm import config
from minildm.config import MinildmError, get_profile
from minildm.data.sources import HUB_DATASETS
from minildm.unet import UNet, UNetConfig, parameter_count

ROOT = Path(__file__).resolve().parent.parent
CONDA_NAMES = {"torch": "pytorch"}  # PyPI name -> conda-forge name where they differ


def requirement(text: str) -> tuple[str, str]:
    name, spec = re.match(r"([A-Za-z0-9_.-]+)\s*(.*)", text).groups()
    return CONDA_NAMES.get(name.lower(), name.lower()), spec.replace(" ", "")


def test_environment_yml_declares_the_same_dependencies_as_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    pip_side = [*project["dependencies"], *extras["dev"], *extras["lab"]]
    environment = yaml.safe_load((ROOT / "environment.yml").read_text())
    conda_side = [d for d in environment["dependencies"] if isinstance(d, str)]
    conda_side = [d for d in conda_side if not d.startswith(("python=", "pip"))]
    pip_section = next(d["pip"] for d in environment["dependencies"] if isinstance(d, dict))
    assert pip_section[-1] == "-e ."
    pip_only = pip_section[:-1]  # packages that conda-forge does not carry
    assert sorted(map(requirement, conda_side + pip_only)) == sorted(map(requirement, pip_side))


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    commands = re.findall(r"```(?:bash|sh)?\n(.*?)```", readme, flags=re.S)[0].split("\n")
    commands = [c.split("#")[0].strip() for c in commands if c.split("#")[0].strip()]
    assert commands == ["make demo", "make test"]
    test_command = re.search(r"\*\*The test command is `([^`]+)`\*\*", readme).group(1)
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert test_command == "make check" and test_command in ci
    makefile = (ROOT / "Makefile").read_text()
    fast = 'MINILDM_PROFILE=tiny $(BIN)/python -m pytest -m "not slow" $(PARALLEL)\n'
    assert f"test: $(VENV)/.installed\n\t{fast}" in makefile  # make test: all but the slow tests
    # make check: everything, the slow tests alone after the rest
    assert f"check: $(VENV)/.installed\n\t{fast}\tMINILDM_PROFILE=tiny $(BIN)/python -m pytest -m slow\n" in makefile
    assert "PARALLEL = -n 2 --dist loadfile\n" in makefile  # each notebook whole on one worker


def test_profile_from_environment_and_argument(monkeypatch):
    monkeypatch.setenv(config.PROFILE_ENV, "cpu")
    assert get_profile().name == "cpu"
    assert get_profile("tiny").name == "tiny"
    monkeypatch.delenv(config.PROFILE_ENV)
    assert get_profile().name == ("gpu" if torch.cuda.is_available() else "cpu")
    with pytest.raises(MinildmError, match="unknown profile 'huge': choose one of tiny, cpu, gpu, celebahq256, churches256"):
        get_profile("huge")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown without a GPU")
def test_gpu_profile_without_cuda_says_what_to_do():
    with pytest.raises(MinildmError, match="needs CUDA.*--profile cpu"):
        get_profile("gpu")
    with pytest.raises(MinildmError, match="profile 'churches256' needs CUDA"):
        get_profile("churches256")


@pytest.mark.parametrize("name, factor, unet_millions", [("celebahq256", 4, 209.9), ("churches256", 8, 178.1)])
def test_gpu_recipes_fit_their_latents_and_the_sizes_the_readme_quotes(name, factor, unet_millions):
    profile = config.PROFILES[name]
    assert profile.dataset in HUB_DATASETS and profile.resolution == 256
    preset = profile.ldm
    side = profile.resolution // factor  # LDM-4: 64 x 64 latents, LDM-8: 32 x 32
    with torch.device("meta"):  # sizes without allocating 200 M parameters
        unet = UNet(UNetConfig(4, 4, preset.base_channels, preset.channel_mult, preset.res_blocks,
                               preset.attention_levels))
    assert side % unet.downsampling == 0 and max(preset.attention_levels) < len(preset.channel_mult)
    assert parameter_count(unet) / 1e6 == pytest.approx(unet_millions, abs=0.05)


def test_tiny_profile_is_smallest():
    tiny, cpu, gpu = (config.PROFILES[name] for name in ("tiny", "cpu", "gpu"))
    # gpu trains on real faces, which stop at the held-out part (7,000); toy faces never run out
    assert tiny.n_images < min(cpu.n_images, gpu.n_images)
    assert tiny.resolution <= cpu.resolution <= gpu.resolution


def test_package_imports_without_optional_heavy_modules():
    code = "import sys, minildm.data; print('datasets' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


@pytest.mark.integration
def test_an_installed_package_runs_outside_the_repository_and_writes_nothing_into_it(tmp_path):
    """A non-editable install (a wheel of a copy of the sources, built offline) into a fresh
    virtual environment that borrows this environment's dependencies: ``--help`` and a tiny
    ``train-ae`` run from another folder; data goes to the user's cache folder, the run
    folder to the working directory, and site-packages is left as installed."""
    source = tmp_path / "source"
    shutil.copytree(ROOT / "minildm", source / "minildm", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path / "wheel"), str(source)], check=True, capture_output=True)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site_packages = Path(subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                        capture_output=True, text=True, check=True).stdout.strip())
    (site_packages / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    wheel = next((tmp_path / "wheel").glob("minildm-*.whl"))
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q", str(wheel)],
                   check=True, capture_output=True)
    installed = sorted(path for path in site_packages.rglob("*") if "__pycache__" not in path.parts)
    assert {path.relative_to(site_packages / "minildm").as_posix() for path in installed
            if path.parent.name in ("data", "evaluation")} >= {"data/__init__.py", "data/toyfaces.py",
                                                              "evaluation/__init__.py", "evaluation/scores.py"}

    work, home = tmp_path / "work", tmp_path / "home"
    work.mkdir()
    environment = {key: value for key, value in os.environ.items() if not key.startswith(("MINILDM_", "XDG_"))}
    environment.update(HOME=str(home), PYTHONPATH="")

    def run(*args):
        return subprocess.run([python, *args], cwd=work, env=environment, capture_output=True, text=True, timeout=300)

    where = run("-c", "import minildm; print(minildm.__file__)")
    assert Path(where.stdout.strip()).parent == site_packages / "minildm", where.stderr
    helped = run("-m", "minildm", "--help")
    assert helped.returncode == 0 and "train-ae" in helped.stdout
    trained = run("-m", "minildm", "train-ae", "--profile", "tiny", "--n", "16", "--steps", "2", "--out", "runs/ae")
    assert trained.returncode == 0, trained.stderr
    assert (work / "runs" / "ae" / "weights.safetensors").is_file()
    assert any((home / ".cache" / "minildm" / "cache").iterdir())  # the prepared toy faces
    after = sorted(path for path in site_packages.rglob("*") if "__pycache__" not in path.parts)
    assert after == installed
