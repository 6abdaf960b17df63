"""Training metrics: FLOPs and MFU, throughput, and where numbers go (metrics.jsonl,
TensorBoard, the console, a PNG plot).

FLOPs per trained token (forward + backward = 3 x forward; 2 FLOPs per multiply-add):

    flops_per_token = 6 * (N - E) + 6 * V * D * P / L + 12 * n_layers * D * L

N: all parameters; E: the embedding tables (word V x D, position, token type), which are
lookups, not matmuls; the tied decoder (V x D) is a matmul, but only at the P = max_predictions
scored positions of each L-token sequence (logits are computed only there); the last term is
attention's QK^T and AV (2 matmuls x 2 FLOPs x L x D per token per layer, x3 for backward).
The usual 6 N + 12 n_layers D L (Kaplan et al. 2020) counts every embedding parameter as a
matmul at every position: for roberta-base at L=512 it is 1.33x this count, for the CPU demo's
embedding-dominated tiny model about 3x, so MFU from it would be inflated.
MFU = flops_per_token * tokens/s / (peak FLOP/s per chip x chips), with the table below (dense
bf16 peaks) on accelerators and a measured float32 matmul rate per host on CPU.
"""

from __future__ import annotations

import json
import math
import os
import time
from typing import Any, Iterable

import jax
import jax.numpy as jnp
import numpy as np

from roberta_jax.config import RobertaConfig
from roberta_jax.files import write_text_atomic

# Dense bf16 peak FLOP/s per chip (vendor datasheets). Keys match `device.device_kind`
# substrings; the longest match wins ("TPU v5 lite" before "TPU v5").
PEAK_BF16_FLOPS: dict[str, float] = {
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,   # v5e
    "TPU v5e": 197e12,
    "TPU v5p": 459e12,
    "TPU v5": 459e12,        # v5p reports "TPU v5"
    "TPU v6 lite": 918e12,   # v6e (Trillium)
    "TPU v6e": 918e12,
    "A100": 312e12,
    "H100": 989e12,          # SXM; PCIe parts peak lower (756e12)
    "H200": 989e12,
}


def flops_per_token(model_config: RobertaConfig, num_params: int, seq_len: int,
                    predictions_per_seq: int) -> float:
    """Training FLOPs per token; see the module docstring for the formula."""
    c = model_config
    embeddings = (c.vocab_size + c.max_position_embeddings + c.type_vocab_size) * c.hidden_size
    decoder = 6.0 * c.vocab_size * c.hidden_size * predictions_per_seq / seq_len
    attention = 12.0 * c.num_hidden_layers * c.hidden_size * seq_len
    return 6.0 * (num_params - embeddings) + decoder + attention


_CPU_PEAK: float | None = None


def measured_cpu_matmul_flops(n: int = 1024, repeats: int = 5) -> float:
    """This host's float32 matmul FLOP/s (best of `repeats`), measured once per process."""
    global _CPU_PEAK
    if _CPU_PEAK is None:
        device = jax.local_devices()[0]
        a = jax.device_put(jnp.ones((n, n), jnp.float32), device)
        matmul = jax.jit(lambda x: x @ x)
        matmul(a).block_until_ready()
        best = math.inf
        for _ in range(repeats):
            t0 = time.perf_counter()
            matmul(a).block_until_ready()
            best = min(best, time.perf_counter() - t0)
        _CPU_PEAK = 2.0 * n ** 3 / best
    return _CPU_PEAK


def peak_flops(devices: list | None = None) -> tuple[float, str]:
    """(total peak FLOP/s of `devices`, how it was obtained). On CPU the fake devices of one
    process share its cores, so the peak is one measured matmul rate per process."""
    devices = jax.devices() if devices is None else devices
    kind = devices[0].device_kind
    if devices[0].platform == "cpu":
        hosts = len({d.process_index for d in devices})
        return measured_cpu_matmul_flops() * hosts, f"measured f32 matmul x {hosts} host(s)"
    matches = [k for k in PEAK_BF16_FLOPS if k in kind]
    if not matches:
        return float("nan"), f"unknown device kind {kind!r}"
    key = max(matches, key=len)
    return PEAK_BF16_FLOPS[key] * len(devices), f"{key} bf16 peak x {len(devices)}"


class Throughput:
    """Step time, tokens/s, MFU and ETA between successive `update(step)` calls."""

    def __init__(self, *, tokens_per_step: int, flops_per_token: float, peak: float,
                 start_step: int, total_steps: int):
        self.tokens_per_step = tokens_per_step
        self.flops_per_token = flops_per_token
        self.peak = peak
        self.total_steps = total_steps
        self.reset(start_step)

    def reset(self, step: int) -> None:
        """Restart the clock (after compilation or an evaluation pause)."""
        self._step, self._time = step, time.perf_counter()

    def update(self, step: int) -> dict[str, float]:
        now = time.perf_counter()
        steps = max(step - self._step, 1)
        step_time = (now - self._time) / steps
        self._step, self._time = step, now
        tokens_per_sec = self.tokens_per_step / step_time
        return {"step_time": step_time, "tokens_per_sec": tokens_per_sec,
                "mfu": self.flops_per_token * tokens_per_sec / self.peak,
                "eta_s": step_time * (self.total_steps - step)}


def format_duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rem = divmod(seconds, 3600)
    return f"{h}:{rem // 60:02d}:{rem % 60:02d}"


def _to_python(value: Any) -> Any:
    value = np.asarray(value).item() if not isinstance(value, (str, int, float)) else value
    return None if isinstance(value, float) and not math.isfinite(value) else value


def read_jsonl(path: str) -> list[dict]:
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


class MetricsWriter:
    """Writes metrics.jsonl, TensorBoard events and console lines (process 0 only).

    On resume, records after `start_step` (logged past the checkpoint before an interruption)
    are dropped, so the file reads as one uninterrupted run.
    """

    def __init__(self, workdir: str, *, start_step: int, total_steps: int,
                 enabled: bool = True, tensorboard: bool = True):
        self.enabled = enabled
        self.total_steps = total_steps
        self.path = os.path.join(workdir, "metrics.jsonl")
        self._tb = None
        if not enabled:
            return
        os.makedirs(workdir, exist_ok=True)
        kept = [r for r in read_jsonl(self.path) if r.get("step", 0) <= start_step]
        write_text_atomic(self.path, "".join(json.dumps(r) + "\n" for r in kept))
        self._file = open(self.path, "a")
        if tensorboard:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"), purge_step=start_step + 1)

    def write(self, step: int, scalars: dict[str, Any]) -> dict:
        record = {"step": int(step), **{k: _to_python(v) for k, v in scalars.items()}}
        if self.enabled:
            self._file.write(json.dumps(record) + "\n")
            self._file.flush()
            if self._tb is not None:
                for k, v in record.items():
                    if k != "step" and isinstance(v, (int, float)):
                        self._tb.add_scalar(k, v, step)
        return record

    def console(self, record: dict) -> None:
        if not self.enabled:
            return
        step = record["step"]
        if "eval_loss" in record:
            print(f"[eval  {step:>7d}/{self.total_steps}] loss {record['eval_loss']:.4f} "
                  f"ppl {record['eval_perplexity']:.2f} "
                  f"mlm_acc {record['eval_mlm_accuracy']:.4f}", flush=True)
            return
        line = (f"[train {step:>7d}/{self.total_steps}] loss {record['loss']:.4f} "
                f"mlm_acc {record['mlm_accuracy']:.4f} lr {record['learning_rate']:.3g}")
        if "tokens_per_sec" in record:
            line += (f" | {record['tokens_per_sec']:,.0f} tok/s mfu {record['mfu']:.2%} "
                     f"eta {format_duration(record.get('eta_s', 0))}")
        print(line, flush=True)

    def close(self) -> None:
        if self.enabled:
            self._file.close()
            if self._tb is not None:
                self._tb.close()


def plot_metrics(records: Iterable[dict], png_path: str) -> str:
    """Loss and MLM accuracy (train and eval) against step, saved as a PNG (atomically)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = list(records)
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
    for prefix, style in (("", "-"), ("eval_", "o-")):
        rows = [r for r in records if r.get(prefix + "loss") is not None]
        steps = [r["step"] for r in rows]
        label = "eval" if prefix else "train"
        ax_loss.plot(steps, [r[prefix + "loss"] for r in rows], style, label=label)
        ax_acc.plot(steps, [r[prefix + "mlm_accuracy"] for r in rows], style, label=label)
    ax_loss.set(xlabel="step", ylabel="MLM loss", title="loss")
    ax_acc.set(xlabel="step", ylabel="accuracy", title="MLM accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    tmp = f"{png_path}.tmp-{os.getpid()}.png"
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, png_path)
    return png_path


def describe_memory(compiled) -> str:
    """Per-device memory of a compiled step (XLA's buffer assignment), before it runs: state
    and batch (arguments), outputs not aliased to donated inputs, and temporaries
    (activations kept for the backward pass). '' when the backend does not report it."""
    try:
        m = compiled.memory_analysis()
    except Exception:  # some backends/plugins raise instead of returning None
        return ""
    if m is None:
        return ""
    new_outputs = max(m.output_size_in_bytes - m.alias_size_in_bytes, 0)
    total = m.argument_size_in_bytes + new_outputs + m.temp_size_in_bytes
    return (f"per-device memory: {_bytes(total)} (arguments {_bytes(m.argument_size_in_bytes)}, "
            f"temporaries {_bytes(m.temp_size_in_bytes)}, new outputs {_bytes(new_outputs)})")


def _bytes(n: float) -> str:
    return f"{n / 2 ** 30:.2f} GiB" if n >= 2 ** 30 else f"{n / 2 ** 20:.1f} MiB"
