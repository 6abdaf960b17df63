"""2 processes x 4 CPU devices (scripts/launch_local.py, gloo on loopback) train the same
losses as 1 process x 8 devices, each process loading only its rows."""

import os
import subprocess
import sys

import pytest

from _pretrain_helpers import CONFIG, STEPS, corpus, reference_run, tiny_overrides, train_losses

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_two_processes_match_one(tmp_path_factory):
    data = corpus(tmp_path_factory)
    reference = reference_run(tmp_path_factory)
    workdir = tmp_path_factory.mktemp("multihost") / "wd"
    command = [sys.executable, os.path.join(ROOT, "scripts", "launch_local.py"), "-n", "2",
               "--devices-per-process", "4", "--timeout", "240", "--",
               sys.executable, "-m", "roberta_jax", "pretrain", "--config", CONFIG,
               "--workdir", str(workdir), *tiny_overrides(data)]
    run = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    lines = run.stdout.splitlines()
    assert any(line.startswith("[p0] model:") and "(2 processes)" in line for line in lines)
    assert not any(line.startswith("[p1] [train") for line in lines)  # process 0 logs
    losses, expected = train_losses(workdir), reference["losses"]
    assert sorted(losses) == list(range(1, STEPS + 1))
    # Same global batches and masks; only the cross-process reduction order differs.
    for step in expected:
        assert losses[step] == pytest.approx(expected[step], rel=1e-5), step
    assert sorted(os.listdir(workdir / "checkpoints")) == ["3", "6"]


def test_launcher_fails_when_a_process_fails(tmp_path):
    command = [sys.executable, os.path.join(ROOT, "scripts", "launch_local.py"), "-n", "2", "--",
               sys.executable, "-c",
               "import sys; i = sys.argv[sys.argv.index('--process_id') + 1]; "
               "print('hello from', i); sys.exit(3 if i == '1' else 0)"]
    run = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert run.returncode == 3
    assert "[p0] hello from 0" in run.stdout and "[p1] hello from 1" in run.stdout
