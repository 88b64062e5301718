"""examples/quickstart.ipynb runs top to bottom (nbclient, a fresh kernel) in under a minute and
shows frames, spectrograms and a playable pair; the README's notebook snippet is its code."""

import re
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "examples" / "quickstart.ipynb"
MARKER = "<!-- the code of examples/quickstart.ipynb (tests/test_notebook.py) -->"


def code_of(nb) -> str:
    return "\n\n".join(c.source for c in nb.cells if c.cell_type == "code")


def test_quickstart_notebook_runs_in_under_a_minute():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(
        nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}
    )
    start = time.perf_counter()
    client.execute()
    elapsed = time.perf_counter() - start
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    html = " ".join(o.get("data", {}).get("text/html", "") for o in outputs)
    assert any("image/png" in o.get("data", {}) for o in outputs)  # frames + spectrograms
    assert "<video" in html and "<audio" in html  # one pair played
    assert elapsed < 60, f"the notebook took {elapsed:.0f} s"


def test_readme_snippet_is_the_notebook_code():
    readme = (ROOT / "README.md").read_text()
    assert MARKER in readme
    block = re.search(r"```python\n(.*?)```", readme[readme.index(MARKER) :], re.S).group(1)
    assert block.strip() == code_of(nbformat.read(NOTEBOOK, as_version=4)).strip()
