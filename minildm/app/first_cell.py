# NBVAL_IGNORE_OUTPUT
# Setup: makes `import minildm` work in this kernel (README, "Colab and JupyterLab").
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

REPOSITORY = "https://github.com/minildm/minildm"  # from pyproject.toml; MINILDM_REPOSITORY overrides it


def find_checkout(folder: Path) -> Path | None:
    """The minildm checkout that holds ``folder`` (a notebook's working directory), if any."""
    for candidate in (folder, *folder.parents):
        if (candidate / "pyproject.toml").is_file() and (candidate / "minildm" / "__init__.py").is_file():
            return candidate
    return None


def install(checkout: Path) -> None:
    """Install the checkout in editable mode. pip keeps a torch that is already installed
    (Colab's own build), because the checkout only asks for torch>=2.2."""
    print(f"installing minildm from {checkout.name}/ with pip (about a minute the first time) ...", flush=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "-e", str(checkout)], check=True)
    sys.path.insert(0, str(checkout))  # this kernel started before the install
    importlib.invalidate_caches()


try:
    import minildm  # noqa: F401 (is it importable?)
except ModuleNotFoundError:
    checkout = find_checkout(Path.cwd())
    if checkout is None and ("google.colab" in sys.modules or "COLAB_RELEASE_TAG" in os.environ):
        checkout = Path.cwd() / "minildm"
        if not checkout.exists():
            source = os.environ.get("MINILDM_REPOSITORY", REPOSITORY)
            subprocess.run(["git", "clone", "--quiet", "--depth", "1", source, str(checkout)], check=True)
    if checkout is not None:
        install(checkout)
if importlib.util.find_spec("minildm") is None:
    print(f"minildm is not installed: run `pip install git+{REPOSITORY}`, or open the notebook from a checkout")
else:
    from minildm.app.provenance import setup_summary

    print(setup_summary())
