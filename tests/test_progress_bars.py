"""Progress bars stay plain tqdm: ``tqdm.auto`` in a kernel without ipywidgets prints a
TqdmWarning ("IProgress not found") into the notebook's output (it did in notebook 08)."""

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
AUTO_IMPORT = re.compile(r"^\s*(from\s+tqdm\.(auto|autonotebook|notebook)\s+import|import\s+tqdm\.(auto|autonotebook|notebook))",
                         re.MULTILINE)


def test_the_package_imports_plain_tqdm_only():
    offenders = [str(path.relative_to(ROOT)) for path in sorted((ROOT / "minildm").rglob("*.py"))
                 if AUTO_IMPORT.search(path.read_text(encoding="utf-8"))]
    assert offenders == []


def test_no_committed_notebook_output_holds_a_tqdm_warning():
    found = []
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        for index, cell in enumerate(json.loads(path.read_text(encoding="utf-8"))["cells"]):
            for output in cell.get("outputs", []):
                text = "".join(output.get("text", []))
                if "TqdmWarning" in text or "IProgress not found" in text:
                    found.append(f"{path.name} cell {index}")
    assert found == []
