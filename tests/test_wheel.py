"""`pip install .` (not editable) gives a working medtune: presets ship as package data.

Builds a wheel, installs it with --no-deps into a fresh virtualenv outside the checkout (its
dependencies come from the test environment's site-packages through a .pth path line, which
does not run the editable install's import hook), then runs `medtune compare --preset tiny`
from a folder outside the checkout and checks that the installed copy, not src/, ran.
"""

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from conftest import MEDQUAD, ROOT

pytestmark = pytest.mark.slow


def run(cmd, **kw):
    out = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=900, **kw)
    assert out.returncode == 0, (cmd, out.stdout[-2000:], out.stderr[-3000:])
    return out


def test_wheel_installs_and_runs_a_preset_outside_the_checkout(tmp_path):
    if not MEDQUAD.is_dir():
        pytest.skip(f"MedQuAD not found at {MEDQUAD}")
    dist = tmp_path / "dist"
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", dist, ROOT])
    (wheel,) = dist.glob("medtune-*.whl")
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", venv])
    py = venv / "bin" / "python"
    site = Path(run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip())
    (site / "medtune_test_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", site, wheel])
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = dict(os.environ, MEDTUNE_PROGRESS="0", PYTHONPATH="")
    where = run([py, "-c", "import medtune; print(medtune.__file__)"], cwd=work, env=env).stdout.strip()
    assert Path(where).is_relative_to(site), where  # the wheel's copy, not the checkout's src/
    out = run(
        [py, "-m", "medtune.cli", "compare", "--preset", "tiny", "--data", MEDQUAD, "--out", work / "cmp"],
        cwd=work,
        env=env,
    )
    assert (work / "cmp" / "report.md").is_file(), out.stdout[-2000:]
    assert (work / "cmp" / "results.json").is_file()
