"""The README's commands run as written: every script a fenced shell command names exists, and every flag it passes is
one that the script's --help lists. The README itself stays short enough to read."""

import re
import shlex
import subprocess
import sys
from functools import cache

import pytest

from conftest import ROOT

README = (ROOT / "README.md").read_text(encoding="utf-8")


def shell_commands():
    """(script, flags) for each script run in a ```bash block: python X.py, !python X.py, torchrun ... X.py."""
    found = []
    for block in re.findall(r"```(?:bash|sh|python)\n(.*?)```", README, re.S):
        text = block.replace("\\\n", " ")
        for line in text.splitlines():
            line = line.split("  #")[0].strip().lstrip("!")
            for command in re.split(r"&&|;|\|", line):
                words = shlex.split(command, posix=True) if command.count('"') % 2 == 0 else command.split()
                scripts = [word for word in words if word.endswith(".py") and "/" not in word]
                if scripts and words and words[0] in ("python", "torchrun"):
                    flags = [word.split("=")[0] for word in words if word.startswith("--")]
                    found.append((scripts[0], [flag for flag in flags if not flag.startswith("--nproc")
                                                and flag != "--standalone"]))
    return found


@cache
def help_text(script):
    result = subprocess.run([sys.executable, script, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"{script} --help failed: {result.stderr[-500:]}"
    return result.stdout


def test_the_readme_names_commands_of_every_script():
    scripts = {script for script, _ in shell_commands()}
    assert len(shell_commands()) >= 10 and {"prepare_data.py", "gpt.py"} <= scripts


@pytest.mark.parametrize("script, flags", shell_commands(), ids=lambda value: str(value)[:60])
def test_each_readme_command_uses_an_existing_script_and_its_flags(script, flags):
    assert (ROOT / script).is_file(), f"the README runs {script}, which does not exist"
    listed = set(re.findall(r"--[\w-]+", help_text(script)))
    missing = [flag for flag in flags if flag not in listed]
    assert not missing, f"the README passes {missing} to {script}, whose --help does not list them"


def test_the_readme_stays_short():
    assert len(README.encode("utf-8")) <= 12_000
