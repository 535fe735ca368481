"""Repository-wide guards: CI runs the README's test command, and importing a script does no work."""

import re
import subprocess
import sys

import pytest

from conftest import ROOT

SCRIPTS = ["bpe", "prepare_data", "gpt", "gpt_rope", "seq2seq_rnn", "finetune_gpt2", "embeddings_pca", "tune"]


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    command = re.search(r"python -m pytest[^`\n]*", readme).group(0)
    assert command in (ROOT / ".ci" / "run").read_text()


@pytest.mark.parametrize("name", SCRIPTS)
def test_import_does_no_work(name):
    if not (ROOT / f"{name}.py").exists():
        pytest.skip(f"{name}.py is not written yet")
    code = f"import {name}"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "", f"importing {name}.py printed: {result.stdout[:200]!r}"
