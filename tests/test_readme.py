"""The README's Python examples run as written."""

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_has_examples():
    assert len(BLOCKS) >= 2


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_example_runs(index):
    exec(compile(BLOCKS[index], f"README.md[python {index}]", "exec"), {})


def test_quickstart_script_runs(capsys):
    script = README.parent / "examples" / "quickstart.py"
    exec(compile(script.read_text(), str(script), "exec"), {"__name__": "__main__"})
    out = capsys.readouterr().out
    assert "GradCAM" in out and "Occlusion" in out
