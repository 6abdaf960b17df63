"""Schedules, decay mask, AdamW against torch's update rule, LAMB's trust ratio, errors."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from roberta_jax import optim
from roberta_jax.config import RobertaConfig
from roberta_jax.convert.mapping import flatten
from roberta_jax.errors import ConfigError
from roberta_jax.model import init_params, make_model


def cfg(**kw):
    base = dict(optimizer="adamw", learning_rate=1e-3, warmup_steps=10, steps=110,
                schedule="linear", weight_decay=0.01, max_grad_norm=0.0)
    return ml_collections.ConfigDict({**base, **kw})


def test_linear_schedule_is_hf_linear_with_warmup():
    sched = optim.make_schedule(cfg())
    for step, want in [(0, 0.0), (5, 5e-4), (10, 1e-3), (60, 5e-4), (110, 0.0), (200, 0.0)]:
        assert float(sched(step)) == pytest.approx(want, abs=1e-9)


def test_polynomial_and_cosine_schedules():
    poly = optim.make_schedule(cfg(schedule="polynomial", poly_power=2.0, end_learning_rate=1e-5))
    # (peak - end) * (1 - t/T)^2 + end, t counted after warmup
    assert float(poly(60)) == pytest.approx((1e-3 - 1e-5) * 0.25 + 1e-5, rel=1e-6)
    assert float(poly(110)) == pytest.approx(1e-5, rel=1e-6)
    cos = optim.make_schedule(cfg(schedule="cosine"))
    assert float(cos(10)) == pytest.approx(1e-3, rel=1e-6)
    assert float(cos(60)) == pytest.approx(5e-4, rel=1e-5)
    assert float(cos(110)) == pytest.approx(0.0, abs=1e-9)
    nowarm = optim.make_schedule(cfg(warmup_steps=0))
    assert float(nowarm(0)) == pytest.approx(1e-3)


def test_decay_mask_excludes_biases_and_layernorm_only():
    config = RobertaConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1,
                           num_attention_heads=2, intermediate_size=32, max_position_embeddings=20)
    params = init_params(make_model(config, "masked-lm"), jax.random.key(0))
    mask = dict(flatten(optim.decay_mask(params)))
    no_decay = sorted(k for k, v in mask.items() if not v)
    assert all(k.endswith(("bias", "scale")) for k in no_decay)
    assert "lm_head_bias" in no_decay and "roberta/embeddings/LayerNorm/scale" in no_decay
    decayed = sorted(k for k, v in mask.items() if v)
    assert "roberta/embeddings/word_embeddings/embedding" in decayed
    assert all(k.endswith(("kernel", "embedding")) for k in decayed)
    assert len(decayed) == 3 + 6 + 1  # 3 embeddings, q/k/v/o/ffn-in/ffn-out, lm_head dense


def _torch_adamw_reference(w, grads, lr, b1, b2, eps, wd):
    """torch.optim.AdamW's update, written out in numpy (float64)."""
    m, v = np.zeros_like(w), np.zeros_like(w)
    for t, g in enumerate(grads, start=1):
        w = w * (1 - lr * wd)
        m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g
        denom = np.sqrt(v) / np.sqrt(1 - b2 ** t) + eps
        w = w - lr / (1 - b1 ** t) * m / denom
    return w


def test_adamw_matches_torch_update_rule():
    rng = np.random.default_rng(0)
    params = {"dense": {"kernel": rng.normal(size=(4, 3)).astype(np.float32),
                        "bias": rng.normal(size=(3,)).astype(np.float32)}}
    grads = [jax.tree_util.tree_map(lambda x: rng.normal(size=x.shape).astype(np.float32) * 1e-3,
                                    params) for _ in range(3)]
    # Tiny gradients make eps (1e-6) matter: its placement is tested too.
    tx = optim.make_optimizer(cfg(warmup_steps=0, steps=10 ** 9, weight_decay=0.1))
    state, p = tx.init(params), params
    for g in grads:
        updates, state = tx.update(g, state, p)
        p = optax.apply_updates(p, updates)
    for name, wd in (("kernel", 0.1), ("bias", 0.0)):
        want = _torch_adamw_reference(params["dense"][name].astype(np.float64),
                                      [g["dense"][name].astype(np.float64) for g in grads],
                                      1e-3, 0.9, 0.98, 1e-6, wd)
        np.testing.assert_allclose(p["dense"][name], want, rtol=1e-6, atol=1e-7)


def test_lamb_scales_each_update_to_lr_times_weight_norm():
    rng = np.random.default_rng(1)
    params = {"a": {"kernel": rng.normal(size=(8, 8)).astype(np.float32)},
              "b": {"kernel": 5 * rng.normal(size=(8,)).astype(np.float32)}}
    grads = jax.tree_util.tree_map(lambda x: rng.normal(size=x.shape).astype(np.float32), params)
    tx = optim.make_optimizer(cfg(optimizer="lamb", warmup_steps=0, steps=10 ** 9))
    updates, _ = tx.update(grads, tx.init(params), params)
    for k in params:
        ratio = np.linalg.norm(updates[k]["kernel"]) / np.linalg.norm(params[k]["kernel"])
        assert ratio == pytest.approx(1e-3, rel=1e-4)  # layer-wise trust ratio


def test_clipping_bounds_the_gradient_norm_seen_by_adam():
    params = {"w": jnp.ones((4,))}
    tx = optim.make_optimizer(cfg(warmup_steps=0, steps=10 ** 9, max_grad_norm=1.0))
    state = tx.init(params)
    _, state = tx.update({"w": jnp.full((4,), 100.0)}, state, params)
    adam = [s for s in jax.tree_util.tree_leaves(state, is_leaf=lambda x: hasattr(x, "mu"))
            if hasattr(s, "mu")][0]
    # mu = (1 - b1) * clipped grad; the clipped grad has norm 1 (0.5 per element).
    np.testing.assert_allclose(adam.mu["w"], 0.1 * 0.5, rtol=1e-6)


@pytest.mark.parametrize("change, words", [
    (dict(optimizer="sgd"), ["optimizer='sgd'"]),
    (dict(schedule="step"), ["schedule='step'"]),
    (dict(warmup_steps=110), ["warmup_steps=110", "steps=110"]),
    (dict(learning_rate=0.0), ["learning_rate=0.0"]),
    (dict(max_grad_norm=-1.0), ["max_grad_norm=-1.0"]),
])
def test_config_errors(change, words):
    with pytest.raises(ConfigError) as e:
        optim.make_optimizer(cfg(**change))
    assert all(w in str(e.value) for w in words)
