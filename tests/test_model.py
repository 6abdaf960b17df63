"""Model parity with transformers' PyTorch RoBERTa classes, built from random configs.

Tolerance (float32): |ours - reference| <= 1e-5 * max(1, |reference|) elementwise, on every
non-padding position.
"""

import zlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers as tf

from roberta_jax.config import RobertaConfig
from roberta_jax.convert import mapping
from roberta_jax.errors import ConfigError, InputError
from roberta_jax.model import (RobertaModel, dummy_inputs, init_boxed, init_params, make_model,
                               param_count, position_ids_from_input_ids)

RTOL = 1e-5
CONFIGS = {
    "small": RobertaConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                           intermediate_size=37, max_position_embeddings=40, type_vocab_size=2,
                           num_labels=3, hidden_act="gelu"),
    "wide": RobertaConfig(vocab_size=211, hidden_size=48, num_hidden_layers=3, num_attention_heads=3,
                          intermediate_size=96, max_position_embeddings=66, type_vocab_size=1,
                          num_labels=5, layer_norm_eps=1e-12),
    "deep": RobertaConfig(vocab_size=150, hidden_size=64, num_hidden_layers=4, num_attention_heads=8,
                          intermediate_size=128, max_position_embeddings=130, type_vocab_size=2,
                          num_labels=2),
}
HF_CLASSES = {
    "base": tf.RobertaModel, "masked-lm": tf.RobertaForMaskedLM,
    "sequence-classification": tf.RobertaForSequenceClassification,
    "token-classification": tf.RobertaForTokenClassification,
    "question-answering": tf.RobertaForQuestionAnswering,
    "multiple-choice": tf.RobertaForMultipleChoice,
}


def hf_config(cfg: RobertaConfig) -> tf.RobertaConfig:
    d = cfg.to_hf_dict()
    d.pop("roberta_jax")
    d["id2label"] = {int(k): v for k, v in d["id2label"].items()}
    return tf.RobertaConfig(**d)


def ragged_batch(cfg: RobertaConfig, lengths, seed=0, with_types=False):
    """Right-padded batch: <s> tokens... </s> then padding, ragged lengths."""
    rng = np.random.default_rng(seed)
    L = max(lengths)
    ids = np.full((len(lengths), L), cfg.pad_token_id, np.int64)
    mask = np.zeros_like(ids)
    for b, n in enumerate(lengths):
        ids[b, :n] = rng.integers(3, cfg.vocab_size, n)
        ids[b, 0], ids[b, n - 1] = cfg.bos_token_id, cfg.eos_token_id
        mask[b, :n] = 1
    types = None
    if with_types:
        types = np.zeros_like(ids)
        for b, n in enumerate(lengths):
            types[b, n // 2:n] = 1
    return ids, mask, types


def assert_close(ours, ref, valid=None, rtol=RTOL):
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    assert ours.shape == ref.shape
    if valid is not None:
        ours, ref = ours[valid], ref[valid]
    err = np.abs(ours - ref)
    bound = rtol * np.maximum(1.0, np.abs(ref))
    assert (err <= bound).all(), f"max |diff| {err.max():.3g} (bound {rtol} x max(1, |ref|))"


def torch_outputs(task, out):
    if task == "base":
        return (out.last_hidden_state,)
    if task == "question-answering":
        return out.start_logits, out.end_logits
    return (out.logits,)


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("task", list(HF_CLASSES))
def test_parity_with_transformers(name, task):
    cfg = CONFIGS[name]
    if task == "question-answering":
        cfg = cfg.replace(num_labels=2)
    # zlib.crc32, not hash(): str hashes change per process (PYTHONHASHSEED), seeds must not.
    torch.manual_seed(zlib.crc32(f"{name}/{task}".encode()))
    kwargs = {"add_pooling_layer": False} if task == "base" else {}
    ref_model = HF_CLASSES[task](hf_config(cfg), **kwargs).eval()
    state = {k: v.numpy() for k, v in ref_model.state_dict().items()}
    params = mapping.hf_to_params(state, cfg, task, log=lambda s: None)
    model = make_model(cfg, task)

    lengths = [cfg.max_sequence_length, 9, 3, cfg.max_sequence_length - 4]
    for with_types in sorted({False, cfg.type_vocab_size > 1}):
        ids, mask, types = ragged_batch(cfg, lengths, seed=len(name), with_types=with_types)
        valid = mask.astype(bool)
        if task == "multiple-choice":
            # (B, C, L): two choices per example, the second a permutation of the batch.
            perm = [1, 2, 3, 0]
            stack = lambda x: None if x is None else np.stack([x, x[perm]], axis=1)
            ids, mask, types = stack(ids), stack(mask), stack(types)
        kw = {} if types is None else {"token_type_ids": types}
        ours = model.apply({"params": params}, jnp.asarray(ids), attention_mask=jnp.asarray(mask),
                           **{k: jnp.asarray(v) for k, v in kw.items()})
        with torch.no_grad():
            ref = torch_outputs(task, ref_model(input_ids=torch.tensor(ids),
                                                attention_mask=torch.tensor(mask),
                                                **{k: torch.tensor(v) for k, v in kw.items()}))
        ours = ours if isinstance(ours, tuple) else (ours,)
        for o, r in zip(ours, ref, strict=True):
            per_token = o.ndim >= 2 and o.shape[:2] == valid.shape
            assert_close(o, r.numpy(), valid if per_token else None)


def test_masked_lm_logits_at_positions_equal_full_logits():
    cfg = CONFIGS["small"]
    model = make_model(cfg, "masked-lm")
    params = init_params(model, jax.random.key(0))
    ids, mask, _ = ragged_batch(cfg, [20, 11, 5])
    full = model.apply({"params": params}, ids, attention_mask=mask)
    positions = jnp.array([[1, 4, 19], [2, 3, 0], [1, 1, 2]])
    some = model.apply({"params": params}, ids, attention_mask=mask, masked_positions=positions)
    np.testing.assert_allclose(some, jnp.take_along_axis(full, positions[..., None], axis=1),
                               rtol=1e-6, atol=1e-6)


@pytest.fixture(scope="module")
def small_mlm():
    cfg = CONFIGS["deep"]
    model = make_model(cfg, "masked-lm")
    params = init_params(model, jax.random.key(1))
    ids, mask, _ = ragged_batch(cfg, [30, 17, 8, 2], seed=3)
    return cfg, model, params, jnp.asarray(ids), jnp.asarray(mask)


def test_jit_and_no_jit_agree(small_mlm):
    cfg, model, params, ids, mask = small_mlm
    eager = model.apply({"params": params}, ids, attention_mask=mask)
    jitted = jax.jit(lambda p, x, m: model.apply({"params": p}, x, attention_mask=m))(params, ids, mask)
    np.testing.assert_allclose(eager, jitted, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("remat", ["none", "full", "dots"])
def test_scan_and_unrolled_agree(small_mlm, remat):
    cfg, model, params, ids, mask = small_mlm
    ref = model.apply({"params": params}, ids, attention_mask=mask)
    scan_cfg = cfg.replace(scan_layers=True, remat_policy=remat)
    scanned = make_model(scan_cfg, "masked-lm")
    stacked = mapping.stack_layers(jax.tree.map(np.asarray, params), cfg.num_hidden_layers)
    out = jax.jit(lambda p: scanned.apply({"params": p}, ids, attention_mask=mask))(stacked)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
    # The scanned init has exactly the stacked layout.
    shapes = jax.tree.map(jnp.shape, nn.unbox(jax.eval_shape(lambda r: init_boxed(scanned, r), jax.random.key(0))))
    assert shapes == jax.tree.map(jnp.shape, stacked)


def test_bf16_compute_close_to_fp32(small_mlm):
    """bf16 compute (fp32 params, fp32 softmax/LayerNorm statistics): logits within
    0.05 x max(1, |fp32 logits|) elementwise and argmax agreeing on >= 95% of positions."""
    cfg, model, params, ids, mask = small_mlm
    ref = np.asarray(model.apply({"params": params}, ids, attention_mask=mask))
    bf16 = make_model(cfg, "masked-lm", dtype=jnp.bfloat16)
    out = bf16.apply({"params": params}, ids, attention_mask=mask)
    assert out.dtype == jnp.bfloat16
    out = np.asarray(out.astype(jnp.float32))
    valid = np.asarray(mask).astype(bool)
    assert_close(out, ref, valid, rtol=0.05)
    assert (out.argmax(-1) == ref.argmax(-1))[valid].mean() >= 0.95


def test_dropout_only_when_not_deterministic(small_mlm):
    cfg, model, params, ids, mask = small_mlm
    det = model.apply({"params": params}, ids, attention_mask=mask)
    run = lambda seed: model.apply({"params": params}, ids, attention_mask=mask, deterministic=False,
                                   rngs={"dropout": jax.random.key(seed)})
    a, b, c = run(0), run(0), run(1)
    np.testing.assert_array_equal(a, b)
    assert float(jnp.abs(a - c).max()) > 1e-3
    assert float(jnp.abs(a - det).max()) > 1e-3


@pytest.mark.parametrize("preset", ["base", "large"])
def test_param_count_equals_transformers(preset):
    cfg = RobertaConfig.preset(preset)
    with torch.device("meta"):
        mlm = tf.RobertaForMaskedLM(hf_config(cfg))
        base = tf.RobertaModel(hf_config(cfg))  # with pooler, HF's default
    ours = lambda model: param_count(jax.eval_shape(lambda r: init_params(model, r), jax.random.key(0)))
    assert ours(make_model(cfg, "masked-lm")) == mlm.num_parameters()
    assert ours(RobertaModel(cfg, add_pooling_layer=True)) == base.num_parameters()
    expected = {"base": 124_645_632, "large": 355_359_744}[preset]  # roberta-base/large, HF
    assert base.num_parameters() == expected


def test_every_param_has_logical_axes():
    cfg = CONFIGS["small"].replace(scan_layers=True)
    for task in HF_CLASSES:
        model = make_model(cfg.replace(num_labels=2) if task == "question-answering" else cfg, task)
        boxed = jax.eval_shape(lambda r: init_boxed(model, r), jax.random.key(0))
        leaves = jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned))
        for leaf in leaves:
            assert isinstance(leaf, nn.Partitioned), leaf
            assert len(leaf.names) == len(leaf.value.shape)


def test_position_ids_follow_roberta_rule():
    ids = jnp.array([[0, 5, 6, 2, 1, 1], [0, 2, 1, 1, 1, 1]])
    np.testing.assert_array_equal(position_ids_from_input_ids(ids, 1),
                                  [[2, 3, 4, 5, 1, 1], [2, 3, 1, 1, 1, 1]])


# ------------------------------------------------------------------------- bad input
def test_bad_config_and_inputs_give_clear_errors(tmp_path):
    with pytest.raises(ConfigError, match="hidden_size=30 is not divisible by num_attention_heads=4"):
        RobertaConfig(hidden_size=30, num_attention_heads=4)
    cfg = CONFIGS["small"]
    model = make_model(cfg, "masked-lm")
    params = init_params(model, jax.random.key(0))
    with pytest.raises(InputError, match=r"input_ids must lie in \[0, 99\); got values in \[0, 99\]"):
        model.apply({"params": params}, jnp.array([[0, 99, 2]]))
    too_long = cfg.max_sequence_length + 1
    with pytest.raises(InputError, match=f"sequence length {too_long} exceeds the model's limit 38"):
        model.apply({"params": params}, jnp.zeros((1, too_long), jnp.int32))
    (tmp_path / "config.json").write_text('{"model_type": "bert", "hidden_size": 8}')
    with pytest.raises(ConfigError, match="model_type='bert'"):
        RobertaConfig.from_pretrained(tmp_path)
    with pytest.raises(ConfigError, match="no config.json"):
        RobertaConfig.from_pretrained(tmp_path / "missing")


def test_hf_config_round_trip(tmp_path):
    cfg = CONFIGS["wide"].replace(id2label_names=("a", "b", "c", "d", "e"))
    cfg.save(tmp_path, architectures=["RobertaForSequenceClassification"])
    hf = tf.AutoConfig.from_pretrained(tmp_path)
    assert hf.model_type == "roberta" and hf.layer_norm_eps == 1e-12 and hf.num_labels == 5
    assert hf.id2label[3] == "d"
    assert RobertaConfig.from_pretrained(tmp_path) == cfg
    # A config.json written by transformers (defaults differ from roberta-base) reads as HF reads it.
    tf.RobertaConfig(vocab_size=50, hidden_size=16, num_attention_heads=2).save_pretrained(tmp_path / "t")
    ours = RobertaConfig.from_pretrained(tmp_path / "t")
    assert (ours.layer_norm_eps, ours.type_vocab_size, ours.max_position_embeddings) == (1e-12, 2, 512)


def test_dummy_inputs_shapes():
    cfg = CONFIGS["small"]
    assert dummy_inputs(make_model(cfg, "multiple-choice"), 2, 5).shape == (2, 2, 5)
    assert dummy_inputs(make_model(cfg, "base"), 2, 500).shape == (2, cfg.max_sequence_length)
