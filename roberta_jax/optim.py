"""Optimizers for pretraining: AdamW (RoBERTa) and LAMB (large-batch BERT), learning-rate
schedules, the weight-decay mask, and global-norm clipping. All of it is optax.

Config keys (an ml_collections ConfigDict or any mapping with .get): optimizer ("adamw" |
"lamb"), learning_rate, warmup_steps, steps, schedule ("linear" | "polynomial" | "cosine"),
end_learning_rate (0.0), poly_power (1.0), weight_decay, max_grad_norm (0/None: no
clipping), adam_b1 (0.9), adam_b2 (0.98), adam_eps (1e-6).
"""

from __future__ import annotations

from typing import Any

import jax
import optax

from roberta_jax.errors import ConfigError

OPTIMIZERS = ("adamw", "lamb")
SCHEDULES = ("linear", "polynomial", "cosine")


def _get(cfg: Any, key: str, default: Any = None) -> Any:
    value = cfg.get(key, default)
    if value is None and default is None:
        raise ConfigError(f"optimizer config is missing {key!r}")
    return value


def make_schedule(cfg: Any) -> optax.Schedule:
    """Linear warmup from 0 to learning_rate over warmup_steps, then decay to
    end_learning_rate at `steps`: linearly (RoBERTa, HF's linear schedule), as a polynomial
    of power poly_power (BERT/LAMB), or along a half cosine."""
    name = _get(cfg, "schedule", "linear")
    peak, end = float(_get(cfg, "learning_rate")), float(cfg.get("end_learning_rate", 0.0) or 0.0)
    steps, warmup = int(_get(cfg, "steps")), int(cfg.get("warmup_steps", 0) or 0)
    if name not in SCHEDULES:
        raise ConfigError(f"schedule={name!r} is not one of {SCHEDULES}")
    if peak <= 0:
        raise ConfigError(f"learning_rate={peak} must be > 0")
    if not 0 <= warmup < steps:
        raise ConfigError(f"warmup_steps={warmup} must be in [0, steps={steps})")
    if name == "cosine":
        return optax.warmup_cosine_decay_schedule(0.0, peak, warmup, steps, end_value=end)
    if name == "linear":
        decay = optax.linear_schedule(peak, end, steps - warmup)
    else:
        power = float(cfg.get("poly_power", 1.0) or 1.0)
        decay = optax.polynomial_schedule(peak, end, power, steps - warmup)
    if warmup == 0:
        return decay
    return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), decay], [warmup])


def decay_mask(params: Any) -> Any:
    """True where weight decay applies: every weight except biases and LayerNorm
    scales/biases (as HF and fairseq do; embeddings are decayed)."""

    def decays(path, _) -> bool:
        name = getattr(path[-1], "key", str(path[-1]))
        return not (name.endswith("bias") or name == "scale")

    return jax.tree_util.tree_map_with_path(decays, params)


def make_optimizer(cfg: Any) -> optax.GradientTransformation:
    """Clipping (if max_grad_norm > 0) then AdamW or LAMB on the schedule of `cfg`.

    optax.adamw matches torch.optim.AdamW: bias-corrected moments, eps added outside the
    square root, decoupled decay lr * weight_decay * param.
    """
    name = _get(cfg, "optimizer", "adamw")
    if name not in OPTIMIZERS:
        raise ConfigError(f"optimizer={name!r} is not one of {OPTIMIZERS}")
    kw = dict(learning_rate=make_schedule(cfg), b1=float(cfg.get("adam_b1", 0.9)),
              b2=float(cfg.get("adam_b2", 0.98)), eps=float(cfg.get("adam_eps", 1e-6)),
              weight_decay=float(cfg.get("weight_decay", 0.01) or 0.0), mask=decay_mask)
    tx = optax.adamw(**kw) if name == "adamw" else optax.lamb(**kw)
    max_norm = cfg.get("max_grad_norm", None)
    if max_norm is not None and float(max_norm) < 0:
        raise ConfigError(f"max_grad_norm={max_norm} must be >= 0 (0 disables clipping)")
    if max_norm:
        tx = optax.chain(optax.clip_by_global_norm(float(max_norm)), tx)
    return tx
