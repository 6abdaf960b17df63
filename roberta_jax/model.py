"""RoBERTa as Flax linen modules: embeddings, attention, post-LN layers, encoder (optional
nn.scan + remat), and the six task models of the public interface.

Nothing here knows about meshes or files. Every parameter carries logical axis names and
activations are constrained at block boundaries; sharding.py maps names to mesh axes.
Numerics follow transformers' PyTorch RoBERTa exactly (erf GELU, LayerNorm eps from the
config, position ids counted from pad+1, tied LM decoder with its own bias).
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from roberta_jax.config import RobertaConfig
from roberta_jax.errors import ConfigError, InputError

Dtype = Any
Array = jax.Array
_lp = nn.with_logical_partitioning
_constrain = nn.with_logical_constraint

ACT_FNS: dict[str, Callable[[Array], Array]] = {
    "gelu": functools.partial(jax.nn.gelu, approximate=False),  # HF "gelu" is the erf form
    "gelu_new": functools.partial(jax.nn.gelu, approximate=True),
    "gelu_pytorch_tanh": functools.partial(jax.nn.gelu, approximate=True),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
    "tanh": jnp.tanh,
}

REMAT_POLICIES = {
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def position_ids_from_input_ids(input_ids: Array, pad_token_id: int) -> Array:
    """RoBERTa's rule: real tokens count up from pad+1; padding keeps position pad."""
    not_pad = (input_ids != pad_token_id).astype(jnp.int32)
    return jnp.cumsum(not_pad, axis=-1) * not_pad + pad_token_id


def check_inputs(config: RobertaConfig, input_ids, token_type_ids=None) -> None:
    """Raise InputError for inputs the model cannot embed. Shape checks always run; value
    checks only on concrete (non-traced) arrays, i.e. outside jit."""
    length = input_ids.shape[-1]
    if length > config.max_sequence_length:
        raise InputError(
            f"sequence length {length} exceeds the model's limit {config.max_sequence_length} "
            f"(max_position_embeddings={config.max_position_embeddings} - pad_token_id "
            f"{config.pad_token_id} - 1); truncate or split the input")
    for name, x, limit in (("input_ids", input_ids, config.vocab_size),
                           ("token_type_ids", token_type_ids, config.type_vocab_size)):
        if x is None or isinstance(x, jax.core.Tracer):
            continue
        x = np.asarray(x)
        if x.size and (x.min() < 0 or x.max() >= limit):
            raise InputError(f"{name} must lie in [0, {limit}); got values in "
                             f"[{int(x.min())}, {int(x.max())}]")


# ---------------------------------------------------------------------------- layers
class _Init:
    """Initialisers with logical axes, matching HF's _init_weights (normal(0, range), zero
    biases, LayerNorm ones/zeros, zeroed padding rows in the embeddings)."""

    def __init__(self, config: RobertaConfig):
        self.std = config.initializer_range
        self.pad = config.pad_token_id

    def kernel(self, *axes):
        return _lp(nn.initializers.normal(self.std), axes)

    def embedding(self, *axes, zero_pad_row: bool = True):
        normal, pad = nn.initializers.normal(self.std), self.pad

        def init(key, shape, dtype=jnp.float32):
            table = normal(key, shape, dtype)
            return table.at[pad].set(0) if zero_pad_row and shape[0] > pad else table
        return _lp(init, axes)

    @staticmethod
    def zeros(*axes):
        return _lp(nn.initializers.zeros_init(), axes)

    @staticmethod
    def ones(*axes):
        return _lp(nn.initializers.ones_init(), axes)


class _Module(nn.Module):
    config: RobertaConfig
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def dense(self, features, in_axis: str | None, out_axis: str | None, name: str):
        init = _Init(self.config)
        return nn.Dense(features, dtype=self.dtype, param_dtype=self.param_dtype,
                        kernel_init=init.kernel(in_axis, out_axis),
                        bias_init=init.zeros(out_axis), name=name)

    def layer_norm(self, name: str):
        return nn.LayerNorm(epsilon=self.config.layer_norm_eps, dtype=self.dtype,
                            param_dtype=self.param_dtype, scale_init=_Init.ones("embed"),
                            bias_init=_Init.zeros("embed"), name=name)


class Embed(_Module):
    """Table lookup. The table is gathered whole before the lookup: sharded over `embed` (FSDP)
    a lookup's output would come out split along the hidden dim and need an all-to-all into
    the batch sharding, which XLA can only do by full rematerialisation."""

    rows: int = 0
    row_axis: str | None = None
    zero_pad_row: bool = True

    @nn.compact
    def __call__(self, ids):
        init = _Init(self.config).embedding(self.row_axis, "embed", zero_pad_row=self.zero_pad_row)
        table = self.param("embedding", init, (self.rows, self.config.hidden_size), self.param_dtype)
        table = _constrain(table, (None, None))
        return jnp.take(table.astype(self.dtype), ids, axis=0)


class Embeddings(_Module):
    @nn.compact
    def __call__(self, input_ids, token_type_ids, position_ids, deterministic: bool):
        cfg = self.config
        embed = functools.partial(Embed, cfg, self.dtype, self.param_dtype)
        words = embed(cfg.vocab_size, "vocab", name="word_embeddings")(input_ids)
        types = embed(cfg.type_vocab_size, None, zero_pad_row=False,
                      name="token_type_embeddings")(token_type_ids)
        positions = embed(cfg.max_position_embeddings, None, name="position_embeddings")(position_ids)
        x = (words + types) + positions  # HF's order of additions
        x = self.layer_norm("LayerNorm")(x)
        x = nn.Dropout(cfg.hidden_dropout_prob)(x, deterministic=deterministic)
        return _constrain(x, ("act_batch", "act_len", "act_embed"))


class HeadsDense(_Module):
    """Dense between (..., D) and (..., H, K): q/k/v projections (to_heads) and the attention
    output. Explicit params + einsum rather than nn.DenseGeneral, which re-runs its
    initialiser on a flat 2-D kernel and so breaks 3-axis logical constraints under a mesh
    (flax #3676). Param names and shapes are DenseGeneral's."""

    to_heads: bool = True

    @nn.compact
    def __call__(self, x):
        cfg, init = self.config, _Init(self.config)
        D, H, K = cfg.hidden_size, cfg.num_attention_heads, cfg.head_dim
        if self.to_heads:
            kernel = self.param("kernel", init.kernel("embed", "heads", "kv"), (D, H, K), self.param_dtype)
            bias = self.param("bias", init.zeros("heads", "kv"), (H, K), self.param_dtype)
            y = jnp.einsum("...d,dhk->...hk", x, kernel.astype(self.dtype))
        else:
            kernel = self.param("kernel", init.kernel("heads", "kv", "embed"), (H, K, D), self.param_dtype)
            bias = self.param("bias", init.zeros("embed"), (D,), self.param_dtype)
            y = jnp.einsum("...hk,hkd->...d", x, kernel.astype(self.dtype))
        return y + bias.astype(self.dtype)


class SelfAttention(_Module):
    deterministic: bool = True

    @nn.compact
    def __call__(self, x_BxLxD, mask_Bx1x1xL):
        cfg, head_dim = self.config, self.config.head_dim

        def project(name):
            return HeadsDense(cfg, self.dtype, self.param_dtype, to_heads=True, name=name)(x_BxLxD)

        heads = ("act_batch", "act_len", "act_heads", None)
        q_BxLxHxK = _constrain(project("query"), heads)
        k_BxLxHxK = _constrain(project("key"), heads)
        v_BxLxHxK = _constrain(project("value"), heads)
        rate = cfg.attention_probs_dropout_prob
        if self.deterministic or rate == 0.0:
            ctx = jax.nn.dot_product_attention(q_BxLxHxK, k_BxLxHxK, v_BxLxHxK, mask=mask_Bx1x1xL,
                                               implementation=cfg.attention_impl)
        else:
            # Dropout on the attention probabilities has no fused kernel: explicit softmax,
            # with logits and softmax in float32 like the fused path.
            logits = jnp.einsum("bqhd,bkhd->bhqk", q_BxLxHxK, k_BxLxHxK,
                                preferred_element_type=jnp.float32) / math.sqrt(head_dim)
            logits = jnp.where(mask_Bx1x1xL, logits, jnp.finfo(jnp.float32).min)
            probs = nn.Dropout(rate)(jax.nn.softmax(logits, axis=-1), deterministic=False)
            ctx = jnp.einsum("bhqk,bkhd->bqhd", probs.astype(v_BxLxHxK.dtype), v_BxLxHxK)
        ctx = _constrain(ctx, heads)
        return HeadsDense(cfg, self.dtype, self.param_dtype, to_heads=False, name="output")(ctx)


class Layer(_Module):
    """Post-LN transformer layer. Returns (x, None) so it can be the body of nn.scan."""

    deterministic: bool = True

    @nn.compact
    def __call__(self, x_BxLxD, mask_Bx1x1xL):
        cfg = self.config
        dropout = functools.partial(nn.Dropout(cfg.hidden_dropout_prob), deterministic=self.deterministic)
        attn = SelfAttention(cfg, self.dtype, self.param_dtype, self.deterministic,
                             name="attention")(x_BxLxD, mask_Bx1x1xL)
        x = self.layer_norm("attention_norm")(dropout(attn) + x_BxLxD)
        x = _constrain(x, ("act_batch", "act_len", "act_embed"))
        h = self.dense(cfg.intermediate_size, "embed", "mlp", "intermediate")(x)
        h = _constrain(ACT_FNS[cfg.hidden_act](h), ("act_batch", "act_len", "act_mlp"))
        h = self.dense(cfg.hidden_size, "mlp", "embed", "output")(h)
        x = self.layer_norm("output_norm")(dropout(h) + x)
        return _constrain(x, ("act_batch", "act_len", "act_embed")), None


class Encoder(_Module):
    deterministic: bool = True

    @nn.compact
    def __call__(self, x_BxLxD, mask_Bx1x1xL):
        cfg = self.config
        layer_cls = Layer
        if cfg.remat_policy != "none":
            # prevent_cse is only needed outside scan (scan already blocks CSE).
            layer_cls = nn.remat(Layer, policy=REMAT_POLICIES[cfg.remat_policy],
                                 prevent_cse=not cfg.scan_layers)
        if cfg.scan_layers:
            stack = nn.scan(layer_cls, variable_axes={"params": 0},
                            split_rngs={"params": True, "dropout": True},
                            in_axes=nn.broadcast, length=cfg.num_hidden_layers,
                            metadata_params={nn.PARTITION_NAME: "layers"})
            x_BxLxD, _ = stack(cfg, self.dtype, self.param_dtype, self.deterministic,
                               name="layers")(x_BxLxD, mask_Bx1x1xL)
            return x_BxLxD
        for i in range(cfg.num_hidden_layers):
            x_BxLxD, _ = layer_cls(cfg, self.dtype, self.param_dtype, self.deterministic,
                                   name=f"layers_{i}")(x_BxLxD, mask_Bx1x1xL)
        return x_BxLxD


class Backbone(_Module):
    """Embeddings + encoder (+ pooler). Params live under 'roberta' in every task model."""

    add_pooling_layer: bool = False

    @nn.compact
    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None,
                 deterministic: bool = True):
        cfg = self.config
        check_inputs(cfg, input_ids, token_type_ids)
        if attention_mask is None:
            attention_mask = input_ids != cfg.pad_token_id
        if token_type_ids is None:
            token_type_ids = jnp.zeros_like(input_ids)
        if position_ids is None:
            position_ids = position_ids_from_input_ids(input_ids, cfg.pad_token_id)
        x = Embeddings(cfg, self.dtype, self.param_dtype, name="embeddings")(
            input_ids, token_type_ids, position_ids, deterministic)
        mask_Bx1x1xL = attention_mask.astype(bool)[:, None, None, :]
        x = Encoder(cfg, self.dtype, self.param_dtype, deterministic, name="encoder")(x, mask_Bx1x1xL)
        if not self.add_pooling_layer:
            return x, None
        pooled = jnp.tanh(self.dense(cfg.hidden_size, "embed", "mlp", "pooler")(x[:, 0]))
        return x, pooled


# ------------------------------------------------------------------------ task models
class _Task(_Module):
    """Common call signature: (input_ids, attention_mask, token_type_ids, position_ids,
    deterministic). Dropout needs rngs={'dropout': key} when deterministic=False."""

    def backbone(self, pool: bool = False):
        return Backbone(self.config, self.dtype, self.param_dtype, add_pooling_layer=pool,
                        name="roberta")

    def head_dropout(self, x, deterministic):
        cfg = self.config
        rate = cfg.hidden_dropout_prob if cfg.classifier_dropout is None else cfg.classifier_dropout
        return nn.Dropout(rate)(x, deterministic=deterministic)


class RobertaModel(_Task):
    """task="base": last hidden state (B, L, D); with add_pooling_layer also the pooled <s>."""

    add_pooling_layer: bool = False

    @nn.compact
    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None,
                 deterministic: bool = True):
        hidden, pooled = self.backbone(self.add_pooling_layer)(
            input_ids, attention_mask, token_type_ids, position_ids, deterministic)
        return (hidden, pooled) if self.add_pooling_layer else hidden


class RobertaForMaskedLM(_Task):
    """task="masked-lm": logits (B, L, V), or (B, P, V) at `masked_positions` (B, P) only."""

    @nn.compact
    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None,
                 deterministic: bool = True, masked_positions=None):
        cfg = self.config
        backbone = self.backbone()
        hidden, _ = backbone(input_ids, attention_mask, token_type_ids, position_ids, deterministic)
        if masked_positions is not None:
            # Scoring only the masked ~15% saves most of the V-sized matmul in pretraining.
            hidden = jnp.take_along_axis(hidden, masked_positions[..., None].astype(jnp.int32), axis=1)
        h = self.dense(cfg.hidden_size, "embed", "mlp", "lm_head_dense")(hidden)
        h = nn.LayerNorm(epsilon=cfg.layer_norm_eps, dtype=self.dtype, param_dtype=self.param_dtype,
                         scale_init=_Init.ones("mlp"), bias_init=_Init.zeros("mlp"),
                         name="lm_head_norm")(ACT_FNS["gelu"](h))
        # The decoder is tied to the word embeddings (HF lm_head.decoder.weight) with its own bias.
        table = nn.unbox(backbone.variables["params"]["embeddings"]["word_embeddings"]["embedding"])
        bias = self.param("lm_head_bias", _Init.zeros("vocab"), (cfg.vocab_size,), self.param_dtype)
        logits = jnp.einsum("...d,vd->...v", h, table.astype(self.dtype)) + bias.astype(self.dtype)
        return _constrain(logits, ("act_batch", "act_len", "act_vocab"))


class RobertaForSequenceClassification(_Task):
    """task="sequence-classification": (B, num_labels) from the <s> token (no pooler)."""

    @nn.compact
    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None,
                 deterministic: bool = True):
        cfg = self.config
        hidden, _ = self.backbone()(input_ids, attention_mask, token_type_ids, position_ids,
                                    deterministic)
        x = self.head_dropout(hidden[:, 0], deterministic)
        x = jnp.tanh(self.dense(cfg.hidden_size, "embed", "mlp", "classifier_dense")(x))
        x = self.head_dropout(x, deterministic)
        return self.dense(cfg.num_labels, "mlp", None, "classifier_out")(x)


class RobertaForTokenClassification(_Task):
    """task="token-classification": (B, L, num_labels)."""

    @nn.compact
    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None,
                 deterministic: bool = True):
        hidden, _ = self.backbone()(input_ids, attention_mask, token_type_ids, position_ids,
                                    deterministic)
        x = self.head_dropout(hidden, deterministic)
        return self.dense(self.config.num_labels, "embed", None, "classifier")(x)


class RobertaForQuestionAnswering(_Task):
    """task="question-answering": (start_logits, end_logits), each (B, L)."""

    @nn.compact
    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None,
                 deterministic: bool = True):
        if self.config.num_labels != 2:
            raise ConfigError(f"question-answering needs num_labels=2 (start, end); the config "
                              f"has num_labels={self.config.num_labels}")
        hidden, _ = self.backbone()(input_ids, attention_mask, token_type_ids, position_ids,
                                    deterministic)
        logits = self.dense(2, "embed", None, "qa_outputs")(hidden)
        return logits[..., 0], logits[..., 1]


class RobertaForMultipleChoice(_Task):
    """task="multiple-choice": inputs (B, C, L) -> scores (B, C). Uses the pooler, like HF."""

    @nn.compact
    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None,
                 deterministic: bool = True):
        batch, choices, length = input_ids.shape
        flat = lambda x: None if x is None else x.reshape(batch * choices, length)
        _, pooled = self.backbone(pool=True)(flat(input_ids), flat(attention_mask),
                                             flat(token_type_ids), flat(position_ids), deterministic)
        x = nn.Dropout(self.config.hidden_dropout_prob)(pooled, deterministic=deterministic)
        return self.dense(1, "embed", None, "classifier")(x).reshape(batch, choices)


TASKS: dict[str, type[_Task]] = {
    "base": RobertaModel,
    "masked-lm": RobertaForMaskedLM,
    "sequence-classification": RobertaForSequenceClassification,
    "token-classification": RobertaForTokenClassification,
    "question-answering": RobertaForQuestionAnswering,
    "multiple-choice": RobertaForMultipleChoice,
}


def make_model(config: RobertaConfig, task: str = "masked-lm", dtype: Dtype = jnp.float32,
               param_dtype: Dtype = jnp.float32, **kwargs) -> _Task:
    if task not in TASKS:
        raise InputError(f"unknown task {task!r}; choose one of {list(TASKS)}")
    return TASKS[task](config, dtype=dtype, param_dtype=param_dtype, **kwargs)


def dummy_inputs(model: nn.Module, batch: int = 1, length: int = 8) -> Array:
    length = min(length, model.config.max_sequence_length)
    shape = (batch, 2, length) if isinstance(model, RobertaForMultipleChoice) else (batch, length)
    return jnp.full(shape, model.config.bos_token_id, jnp.int32)


def init_boxed(model: nn.Module, rng: Array):
    """Params with their nn.Partitioned logical-axis boxes (use under jax.eval_shape/jit)."""
    return model.init({"params": rng}, dummy_inputs(model))["params"]


def init_params(model: nn.Module, rng: Array):
    """Freshly initialised plain-array params (unsharded; for small models and tests)."""
    return nn.unbox(init_boxed(model, rng))


def param_count(params) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(params)))
