"""The README's Python examples run on their own, in an empty folder, and print what they promise."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import subprocess_env

ROOT = Path(__file__).resolve().parents[1]
BLOCKS = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)

#: what each block promises, in order: (regex its output must match, check on the match)
PROMISES = [
    (r"CW\(update\+tele\)\s+log10 loss @30 = +-?\d\.\d\d  @100 = +(-?\d\.\d\d) \[-?\d\.\d\d, -?\d\.\d\d\]\n"
     r"adam\s+log10 loss @30 = +-?\d\.\d\d  @100 = +(-?\d\.\d\d)(?s:.*)Δ = (-?\d\.\d\d) log10",
     lambda m: float(m[1]) < float(m[2]) and float(m[3]) < 0),  # the shipped optimizer beats tuned Adam at 100
    (r"loss after / before teleport: 1 ± (\d)e-(\d\d)\n(\d+) meta-steps on training seeds \(0, (\d+)\) → "
     r"runs/mine\.safetensors",
     lambda m: int(m[2]) >= 12 and int(m[4]) == 100),  # exactly the 100 trajectories trained
    (r"loss ([\d.e+-]+) → ([\d.e+-]+) after 100 steps", lambda m: float(m[2]) < 1e-6 * float(m[1])),
]


def test_the_readme_has_the_blocks_this_test_knows():
    assert len(BLOCKS) == len(PROMISES)


@pytest.mark.parametrize("index", range(len(PROMISES)))
def test_readme_python_block_runs_on_its_own_and_prints_its_promise(index, tmp_path):
    # an empty folder: the blocks need nothing of the repository (shipped optimizers are package data)
    proc = subprocess.run([sys.executable, "-c", BLOCKS[index]], cwd=tmp_path, env=subprocess_env(),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    pattern, check = PROMISES[index]
    match = re.search(pattern, proc.stdout)
    assert match and check(match), proc.stdout


def test_the_readme_opens_with_the_two_commands_and_ci_runs_the_tests_one():
    first = re.search(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.S)[1]
    commands = [line for line in first.splitlines() if not line.startswith("#")]
    assert len(commands) == 2 and commands[0].endswith("metatele demo --out runs/demo")
    assert commands[1] in (ROOT / ".ci" / "run").read_text().splitlines()  # exactly the README's test command
