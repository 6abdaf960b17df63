"""Train step: equality across meshes, gradient accumulation, bf16, scan/remat, no implicit
transfers. Tiny model (hidden 32, 2 layers, 4 heads, vocab 128), batch 16 x 16 tokens."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from roberta_jax import optim, sharding, steps
from roberta_jax.config import RobertaConfig
from roberta_jax.convert.mapping import stack_layers
from roberta_jax.model import make_model

CFG = RobertaConfig(vocab_size=128, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                    intermediate_size=64, max_position_embeddings=40, hidden_dropout_prob=0.0,
                    attention_probs_dropout_prob=0.0)
OPT = ml_collections.ConfigDict(dict(optimizer="adamw", learning_rate=3e-3, warmup_steps=1,
                                     steps=20, schedule="linear", weight_decay=0.01,
                                     max_grad_norm=1.0))
MASKING = steps.MaskingConfig(vocab_size=128, mask_id=4, special_ids=(0, 1, 2, 3, 4))
N_STEPS = 3
# Measured on 8 fake CPU devices: losses differ by <= 1.2e-7 relative and params by
# <= 1.2e-7 absolute across meshes, micro-batching and scan/remat (summation order only);
# bf16 compute moves the loss by <= 4.3e-5 relative over these 3 steps.
LOSS_RTOL = 1e-5
PARAM_ATOL = 1e-6
BF16_RTOL = 1e-3


def make_tokens(batch: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    toks = rng.integers(5, CFG.vocab_size, (batch, 16)).astype(np.int32)
    toks[:, 0], toks[:, -1] = CFG.bos_token_id, CFG.eos_token_id
    toks[-1, 10:] = CFG.pad_token_id  # a padded last block: the attention mask matters
    toks[-1, 9] = CFG.eos_token_id
    return toks


def run(mesh_shape=(1, 1, 1), *, config=CFG, dtype=jnp.float32, accum=1, batch=16,
        params=None, guard=False, preset=None):
    """N_STEPS steps; returns (losses, final params on host, state)."""
    devices = jax.devices()[:int(np.prod(mesh_shape))]
    mesh = sharding.make_mesh(*mesh_shape, devices=devices)
    rules = sharding.rules_for(mesh, preset)
    model = make_model(config, "masked-lm", dtype=dtype)
    tx = optim.make_optimizer(OPT)
    if params is None:
        state, shardings = steps.create_train_state(model, tx, jax.random.key(0), mesh, rules)
    else:
        state, shardings = steps.train_state_from_params(model, tx, params, jax.random.key(0),
                                                         mesh, rules)
    batch_sh = sharding.batch_sharding(mesh)
    step = steps.jit_train_step(
        steps.make_train_step(model, tx, MASKING, grad_accum_steps=accum,
                              schedule=optim.make_schedule(OPT), mesh=mesh, rules=rules),
        shardings, batch_sh)
    tokens = jax.device_put(make_tokens(batch), batch_sh)
    losses = []
    for i in range(N_STEPS):
        if guard and i > 0:
            with jax.transfer_guard("disallow"):
                state, metrics = step(state, tokens)
        else:
            state, metrics = step(state, tokens)
        losses.append(jax.device_get(metrics))
    return losses, jax.device_get(state.params), state


@pytest.fixture(scope="module")
def reference():
    return run()


def _losses(metrics):
    return np.array([m["loss"] for m in metrics])


def _max_param_diff(a, b):
    return max(jax.tree_util.tree_leaves(
        jax.tree_util.tree_map(lambda x, y: float(np.max(np.abs(x - y))), a, b)))


def test_reference_run_learns_and_reports(reference):
    metrics, params, state = reference
    assert int(state.step) == N_STEPS
    for m in metrics:
        assert set(m) == {"loss", "mlm_accuracy", "scored_tokens", "grad_norm", "param_norm",
                          "learning_rate"}
        # ~15% of the 14 maskable tokens of 16 rows (one row has 8): between 10 and 50.
        assert 10 <= m["scored_tokens"] <= 50
        assert np.isfinite(m["loss"]) and 0 <= m["mlm_accuracy"] <= 1
    # ln(128) = 4.85 at init; the warmup step uses lr 0 so step 0's update changes nothing.
    assert abs(metrics[0]["loss"] - np.log(128)) < 0.3
    assert metrics[0]["learning_rate"] == 0.0 and metrics[1]["learning_rate"] == pytest.approx(3e-3)
    # The mask differs per step (dynamic masking).
    assert len({float(m["scored_tokens"]) for m in metrics} | {float(m["loss"]) for m in metrics}) > 3


MESHES = {  # mesh (data, fsdp, tensor), kernel of layer 0's FFN-in and its expected spec
    "data8": ((8, 1, 1), ("dp", (None, None))),
    "fsdp8": ((1, 8, 1), ("fsdp", ("fsdp", None))),
    "d2f2t2": ((2, 2, 2), ("fsdp_tp", ("fsdp", "tensor"))),
    "t4d2": ((2, 1, 4), ("tp", (None, "tensor"))),
}


@pytest.mark.parametrize("name", list(MESHES))
def test_meshes_match_one_device(reference, name):
    mesh_shape, (preset, ffn_spec) = MESHES[name]
    ref_metrics, ref_params, _ = reference
    # The transfer guard proves the jitted step does no implicit host<->device transfer.
    metrics, params, state = run(mesh_shape, guard=True)
    np.testing.assert_allclose(_losses(metrics), _losses(ref_metrics), rtol=LOSS_RTOL)
    assert _max_param_diff(params, ref_params) < PARAM_ATOL

    assert sharding.rules_for(sharding.make_mesh(*mesh_shape)) == \
        sharding.RULE_PRESETS[preset]
    layer = state.params["roberta"]["encoder"]["layers_0"]
    kernel = layer["intermediate"]["kernel"]
    assert tuple(kernel.sharding.spec) == ffn_spec
    # Adam's moments are sharded exactly like their parameters; the count is replicated.
    adam = state.opt_state[1][0]
    assert adam.mu["roberta"]["encoder"]["layers_0"]["intermediate"]["kernel"].sharding == \
        kernel.sharding
    assert adam.nu["roberta"]["encoder"]["layers_0"]["attention"]["query"]["kernel"].sharding \
        == layer["attention"]["query"]["kernel"].sharding
    assert tuple(adam.count.sharding.spec) == ()
    # Shards really are pieces: FFN-in kernel (32, 64) split as the spec says.
    sizes = dict(zip(sharding.MESH_AXES, mesh_shape))
    expect = tuple(d // (sizes[a] if a else 1) for d, a in zip(kernel.shape, ffn_spec))
    assert kernel.addressable_shards[0].data.shape == expect
    if preset in ("tp", "fsdp_tp"):  # Megatron: q/k/v split by heads, attention-out by heads
        assert layer["attention"]["query"]["kernel"].sharding.spec[1] == "tensor"
        assert layer["attention"]["output"]["kernel"].sharding.spec[0] == "tensor"
        assert layer["output"]["kernel"].sharding.spec[0] == "tensor"


def test_grad_accumulation_equals_big_batch(reference):
    """4 micro-batches of 4 rows (on a 2 x 2 data x fsdp mesh) == one batch of 16 rows."""
    big_metrics, big_params, _ = reference
    acc_metrics, acc_params, _ = run((2, 2, 1), accum=4)
    np.testing.assert_allclose(_losses(acc_metrics), _losses(big_metrics), rtol=LOSS_RTOL)
    for key in ("scored_tokens", "mlm_accuracy", "grad_norm"):
        np.testing.assert_allclose([m[key] for m in acc_metrics], [m[key] for m in big_metrics],
                                   rtol=LOSS_RTOL)
    assert _max_param_diff(acc_params, big_params) < PARAM_ATOL


def test_bfloat16_tracks_float32(reference):
    ref_metrics, _, _ = reference
    metrics, params, _ = run(dtype=jnp.bfloat16)
    rel = np.abs(_losses(metrics) / _losses(ref_metrics) - 1)
    assert rel.max() < BF16_RTOL
    assert rel.max() > 0  # it really computed in bf16
    # Master weights stay fp32.
    assert {x.dtype for x in jax.tree_util.tree_leaves(params)} == {np.dtype(np.float32)}


def test_scan_layers_and_remat_match_unrolled(reference):
    ref_metrics, ref_params, _ = reference
    init_params = run_params_at_init()
    scanned = CFG.replace(scan_layers=True, remat_policy="full")
    copy = lambda tree: jax.tree_util.tree_map(lambda x: x, tree)  # stack_layers edits in place
    metrics, params, _ = run(config=scanned, params=stack_layers(copy(init_params), 2))
    np.testing.assert_allclose(_losses(metrics), _losses(ref_metrics), rtol=LOSS_RTOL)
    assert _max_param_diff(params, stack_layers(copy(ref_params), 2)) < PARAM_ATOL


def run_params_at_init():
    mesh = sharding.make_mesh(1, 1, 1, devices=jax.devices()[:1])
    model = make_model(CFG, "masked-lm")
    state, _ = steps.create_train_state(model, optim.make_optimizer(OPT), jax.random.key(0),
                                        mesh, sharding.rules_for(mesh))
    return jax.device_get(state.params)


def test_eval_step_sums_match_train_loss(reference):
    """The eval step with the train step's masks reproduces step 0's loss (lr 0 at step 0)."""
    ref_metrics, _, _ = reference
    mesh = sharding.make_mesh(2, 4, 1)
    model = make_model(CFG, "masked-lm")
    tx = optim.make_optimizer(OPT)
    state, shardings = steps.create_train_state(model, tx, jax.random.key(0), mesh,
                                                sharding.rules_for(mesh))
    mask_rng, _ = steps.step_rngs(state.rng, jnp.int32(0))
    eval_step = steps.jit_eval_step(steps.make_eval_step(model, MASKING), shardings.params,
                                    sharding.batch_sharding(mesh))
    tokens = jax.device_put(make_tokens(16), sharding.batch_sharding(mesh))
    sums = jax.device_get(eval_step(state.params, tokens, jax.random.key_data(mask_rng)))
    assert sums["weight_sum"] == ref_metrics[0]["scored_tokens"]
    np.testing.assert_allclose(sums["loss_sum"] / sums["weight_sum"], ref_metrics[0]["loss"],
                               rtol=LOSS_RTOL)


def test_abstract_state_matches_created_state():
    mesh = sharding.make_mesh(1, 4, 2)
    rules = sharding.rules_for(mesh)
    model, tx = make_model(CFG, "masked-lm"), optim.make_optimizer(OPT)
    abstract, shardings = steps.abstract_train_state(model, tx, mesh, rules)
    state, _ = steps.create_train_state(model, tx, jax.random.key(1), mesh, rules)
    pairs = zip(jax.tree_util.tree_leaves(abstract), jax.tree_util.tree_leaves(state))
    for a, x in pairs:
        assert (a.shape, a.dtype, a.sharding) == (x.shape, x.dtype, x.sharding)
