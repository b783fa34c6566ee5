"""benchmarks/slurm/local.sh (make slurm-up / slurm-down) where it cannot run: a clear message and its exit status.

The cluster itself is exercised by tests/test_slurm.py (make test-slurm); these run anywhere, in seconds.

    .venv/bin/python -m pytest -q tests/test_slurm_script.py
"""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "slurm" / "local.sh"


def test_shell_syntax_and_usage():
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)
    p = subprocess.run(["bash", str(SCRIPT), "sideways"], capture_output=True, text=True)
    assert p.returncode == 2 and "local.sh up" in p.stderr and "local.sh down" in p.stderr


def test_without_the_packages_and_without_apt_it_says_so_and_exits_4(tmp_path):
    """A machine with none of SLURM's commands and no apt-get (a PATH holding only what the script needs first)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("dirname", "mkdir", "hostname", "id", "sed"):
        (bin_dir / tool).symlink_to(shutil.which(tool))
    env = {**os.environ, "PATH": str(bin_dir), "SLURM_LOCAL": str(tmp_path / "cluster")}
    p = subprocess.run([shutil.which("bash"), str(SCRIPT), "up"], capture_output=True, text=True, env=env)
    assert p.returncode == 4, p.stdout + p.stderr
    assert "cannot start a local SLURM cluster here" in p.stderr and "slurmctld" in p.stderr
    assert ("no apt-get" in p.stderr) if os.geteuid() == 0 else ("not root" in p.stderr)
    assert not (tmp_path / "cluster" / "etc").exists()  # nothing half set up


def test_down_with_nothing_running_stops_nothing(tmp_path):
    env = {**os.environ, "SLURM_LOCAL": str(tmp_path / "cluster")}
    p = subprocess.run(["bash", str(SCRIPT), "down"], capture_output=True, text=True, env=env)
    assert p.returncode == 0 and "stopped nothing (nothing was running)" in p.stdout, p.stdout + p.stderr
    p = subprocess.run(["bash", str(SCRIPT), "status"], capture_output=True, text=True, env=env)
    assert p.returncode == 3 and "slurmctld: not running" in p.stdout
