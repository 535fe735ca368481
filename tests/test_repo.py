"""Repository-wide guards: CI runs the README's test command, and importing a script does no work."""

import re
import subprocess
import sys

import pytest

from conftest import ROOT

SCRIPTS = ["bpe", "prepare_data", "gpt", "gpt_rope", "seq2seq_rnn", "seq2seq_transformer", "finetune_gpt2",
           "embeddings_pca", "tune"]


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


# Each script's line budget (../shared/STYLE.md: the whole file, comments included), so that it reads in one sitting.
# gpt_rope.py's budget is its diff against gpt.py (tests/test_gpt_rope.py).
BUDGETS = {"bpe": 550, "prepare_data": 780, "gpt": 750, "seq2seq_rnn": 700, "seq2seq_transformer": 700,
           "finetune_gpt2": 1050, "embeddings_pca": 520, "tune": 150}


@pytest.mark.parametrize("name", BUDGETS)
def test_each_script_stays_within_its_line_budget(name):
    lines = (ROOT / f"{name}.py").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= BUDGETS[name], f"{name}.py has {len(lines)} lines, over its budget of {BUDGETS[name]}"


@pytest.mark.parametrize("name", SCRIPTS)
def test_no_line_is_longer_than_120_characters(name):
    lines = (ROOT / f"{name}.py").read_text(encoding="utf-8").splitlines()
    long = [number for number, line in enumerate(lines, 1) if len(line) > 120]
    assert not long, f"{name}.py has lines over 120 characters: {long[:10]}"
