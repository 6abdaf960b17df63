"""FLOPs/MFU arithmetic, peak lookup, throughput, the JSONL/TensorBoard writer and the plot."""

import json
import os
import types

import pytest

from roberta_jax import metrics as m
from roberta_jax.config import RobertaConfig


def test_flops_per_token_formula():
    cfg = RobertaConfig.preset("base")
    n, emb = 124_697_433, (50265 + 514 + 1) * 768  # roberta-base's masked-LM parameters
    want = 6 * (n - emb) + 6 * 50265 * 768 * 77 / 512 + 12 * 12 * 768 * 512
    assert m.flops_per_token(cfg, n, 512, 77) == pytest.approx(want, rel=1e-12)
    # The textbook 6 N + 12 n_layers D L counts the 39M embedding weights at every position.
    assert (6 * n + 12 * 12 * 768 * 512) / want == pytest.approx(1.33, abs=0.01)


@pytest.mark.parametrize("kind, peak", [
    ("TPU v4", 275e12), ("TPU v5 lite", 197e12), ("TPU v5", 459e12), ("TPU v5p", 459e12),
    ("TPU v6 lite", 918e12), ("NVIDIA A100-SXM4-80GB", 312e12),
    ("NVIDIA H100 80GB HBM3", 989e12), ("NVIDIA H200", 989e12),
])
def test_peak_table(kind, peak):
    devices = [types.SimpleNamespace(device_kind=kind, platform="tpu", process_index=0)] * 4
    total, source = m.peak_flops(devices)
    assert total == 4 * peak, source


def test_cpu_peak_is_measured_and_plausible():
    total, source = m.peak_flops()
    assert "measured" in source and 1e8 < total < 1e14


def test_throughput(monkeypatch):
    clock = iter([100.0, 102.0])
    monkeypatch.setattr(m.time, "perf_counter", lambda: next(clock))
    t = m.Throughput(tokens_per_step=1000, flops_per_token=1e6, peak=1e10, start_step=0,
                     total_steps=30)
    out = t.update(10)  # 10 steps in 2 s
    assert out["step_time"] == pytest.approx(0.2) and out["tokens_per_sec"] == pytest.approx(5000)
    assert out["mfu"] == pytest.approx(0.5) and out["eta_s"] == pytest.approx(4.0)


def test_writer_truncates_on_resume_and_plots(tmp_path, capsys):
    wd = str(tmp_path)
    w = m.MetricsWriter(wd, start_step=0, total_steps=4)
    for step in (1, 2, 3, 4):
        rec = w.write(step, {"loss": 5.0 - step, "mlm_accuracy": 0.1 * step, "learning_rate": 1e-3,
                             "tokens_per_sec": 1234.0, "mfu": 0.25, "eta_s": 61})
    w.console(rec)
    w.write(4, {"eval_loss": 1.5, "eval_perplexity": 4.48, "eval_mlm_accuracy": 0.5})
    w.console({"step": 4, "eval_loss": 1.5, "eval_perplexity": 4.48, "eval_mlm_accuracy": 0.5})
    w.close()
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("[train       4/4] loss 1.0000 mlm_acc 0.4000") and "1,234 tok/s" in out[0]
    assert "mfu 25.00%" in out[0] and "eta 0:01:01" in out[0]
    assert out[1] == "[eval        4/4] loss 1.5000 ppl 4.48 mlm_acc 0.5000"
    # A resume from step 2 drops what was logged after the checkpoint.
    m.MetricsWriter(wd, start_step=2, total_steps=4, tensorboard=False).close()
    records = m.read_jsonl(os.path.join(wd, "metrics.jsonl"))
    assert [r["step"] for r in records] == [1, 2]
    assert json.loads(json.dumps(records[0]))["loss"] == 4.0
    png = m.plot_metrics(records, os.path.join(wd, "plot.png"))
    assert os.path.getsize(png) > 5000
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(os.path.join(wd, "tensorboard")))


def test_disabled_writer_writes_nothing(tmp_path):
    w = m.MetricsWriter(str(tmp_path / "wd"), start_step=0, total_steps=1, enabled=False)
    w.write(1, {"loss": 1.0})
    w.close()
    assert not os.path.exists(tmp_path / "wd")


def test_describe_memory_reports_compiled_step_sizes():
    import jax
    import jax.numpy as jnp

    compiled = jax.jit(lambda x: x @ x, donate_argnums=0).lower(
        jax.ShapeDtypeStruct((256, 256), jnp.float32)).compile()
    text = m.describe_memory(compiled)
    # 256 x 256 float32 = 0.25 MiB of arguments.
    assert text.startswith("per-device memory: ") and "(arguments 0.2 MiB" in text
    assert m.describe_memory(object()) == ""
