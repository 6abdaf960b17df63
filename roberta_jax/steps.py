"""Pure pretraining steps: sharded state creation, the MLM train step (dynamic masking,
gradient accumulation, one optimizer update) and the eval step. No I/O.

The loss is the sum of token cross-entropies divided by the number of scored tokens of the
whole global batch, so it is the same on any mesh and for any number of micro-batches.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any, Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding

from roberta_jax import masking as masking_lib
from roberta_jax import sharding as sharding_lib
from roberta_jax.errors import ConfigError
from roberta_jax.model import init_boxed

Metrics = dict[str, jax.Array]


@flax.struct.dataclass
class TrainState:
    step: jax.Array  # int32 scalar: optimizer updates done
    params: Any
    opt_state: Any
    rng: jax.Array  # jax.random.key_data(key): plain uint32, so it checkpoints


@dataclasses.dataclass(frozen=True)
class MaskingConfig:
    vocab_size: int
    mask_id: int
    special_ids: tuple[int, ...]
    mask_prob: float = 0.15
    replace_with_mask: float = 0.8
    replace_with_random: float = 0.1
    whole_word: bool = False
    word_start: tuple[bool, ...] | None = None  # (vocab_size,) table, needed for whole_word

    def __post_init__(self):
        object.__setattr__(self, "special_ids", tuple(int(i) for i in self.special_ids))
        if not 0.0 < self.mask_prob < 1.0:
            raise ConfigError(f"mask_prob={self.mask_prob} must be in (0, 1)")
        if self.replace_with_mask + self.replace_with_random > 1.0:
            raise ConfigError(f"replace_with_mask={self.replace_with_mask} + replace_with_random="
                              f"{self.replace_with_random} exceeds 1")
        if self.whole_word and (self.word_start is None or len(self.word_start) != self.vocab_size):
            raise ConfigError(f"whole_word masking needs a word_start table of vocab_size="
                              f"{self.vocab_size} entries (use MaskingConfig.from_tokenizer)")

    @classmethod
    def from_tokenizer(cls, tok, vocab_size: int | None = None, **kw) -> "MaskingConfig":
        """From a RobertaTokenizerFast; vocab_size defaults to len(tok) (the model's may be
        larger, e.g. padded to a multiple of 8)."""
        from roberta_jax.data.tokenizer import special_ids, word_start_table

        vocab_size = len(tok) if vocab_size is None else int(vocab_size)
        word_start = None
        if kw.get("whole_word"):
            word_start = tuple(bool(b) for b in word_start_table(tok, vocab_size))
        return cls(vocab_size=vocab_size, mask_id=tok.mask_token_id,
                   special_ids=special_ids(tok), word_start=word_start, **kw)

    def mask(self, rng: jax.Array, tokens_BxL: jax.Array):
        word_start = None if not self.whole_word else jnp.asarray(np.asarray(self.word_start))
        return masking_lib.mask_tokens(
            rng, tokens_BxL, vocab_size=self.vocab_size, mask_id=self.mask_id,
            special_ids=self.special_ids, mask_prob=self.mask_prob,
            replace_with_mask=self.replace_with_mask,
            replace_with_random=self.replace_with_random, word_start=word_start)

    def max_predictions(self, seq_len: int) -> int:
        # Whole words can exceed the per-token bound, so score every position then.
        if self.whole_word:
            return seq_len
        return min(seq_len, masking_lib.max_predictions(seq_len, self.mask_prob))


# ---------------------------------------------------------------------------- state
def _as_key(rng: jax.Array) -> jax.Array:
    """A typed key from a typed key or raw key data."""
    return rng if jnp.issubdtype(rng.dtype, jax.dtypes.prng_key) else jax.random.wrap_key_data(rng)


def _step0_state(tx: optax.GradientTransformation, params: Any, train_rng: jax.Array) -> TrainState:
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                      rng=jax.random.key_data(train_rng))


def _init_fn(model: nn.Module, tx: optax.GradientTransformation):
    def init(rng: jax.Array) -> TrainState:
        params_rng, train_rng = jax.random.split(rng)
        return _step0_state(tx, nn.unbox(init_boxed(model, params_rng)), train_rng)
    return init


def _abstract_and_shardings(model: nn.Module, tx: optax.GradientTransformation, mesh: Mesh,
                            rules) -> tuple[TrainState, TrainState]:
    """(TrainState of ShapeDtypeStructs without shardings, NamedShardings of every leaf)."""
    rng = jax.random.key(0)
    boxed = jax.eval_shape(lambda r: init_boxed(model, r), rng)
    params_sh = sharding_lib.shardings_of(boxed, mesh, rules)
    abstract = jax.eval_shape(_init_fn(model, tx), rng)
    rep = sharding_lib.replicated(mesh)
    opt_sh = optax.tree_map_params(tx, lambda _, s: s, abstract.opt_state, params_sh,
                                   transform_non_params=lambda _: rep)
    return abstract, TrainState(step=rep, params=params_sh, opt_state=opt_sh, rng=rep)


def state_shardings(model: nn.Module, tx: optax.GradientTransformation, mesh: Mesh,
                    rules) -> TrainState:
    """NamedShardings of every TrainState leaf: params by their logical axes, optimizer
    moments like their params, scalars (step, counts, rng) replicated."""
    return _abstract_and_shardings(model, tx, mesh, rules)[1]


def create_train_state(model: nn.Module, tx: optax.GradientTransformation, rng: jax.Array,
                       mesh: Mesh, rules) -> tuple[TrainState, TrainState]:
    """Initialise params and optimizer state directly into their shardings (never a
    replicated copy). rng: a typed key or raw key data. Returns (state, shardings)."""
    shardings = state_shardings(model, tx, mesh, rules)
    state = jax.jit(_init_fn(model, tx), out_shardings=shardings)(_as_key(rng))
    return state, shardings


def train_state_from_params(model: nn.Module, tx: optax.GradientTransformation, params: Any,
                            rng: jax.Array, mesh: Mesh, rules) -> tuple[TrainState, TrainState]:
    """A step-0 state around given params (e.g. converted weights), placed in its shardings."""
    shardings = state_shardings(model, tx, mesh, rules)

    def build(params, rng):
        _, train_rng = jax.random.split(rng)  # the same training key as create_train_state
        return _step0_state(tx, params, train_rng)
    state = jax.jit(build, in_shardings=(shardings.params, None), out_shardings=shardings)(
        params, _as_key(rng))
    return state, shardings


def abstract_train_state(model: nn.Module, tx: optax.GradientTransformation, mesh: Mesh,
                         rules) -> tuple[TrainState, TrainState]:
    """ShapeDtypeStructs carrying the shardings of `mesh` (targets for an orbax restore)."""
    abstract, shardings = _abstract_and_shardings(model, tx, mesh, rules)
    structs = jax.tree_util.tree_map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)
    return structs, shardings


# ---------------------------------------------------------------------------- loss
def step_rngs(state_rng: jax.Array, step: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(masking key, dropout key) of an update: a fold of the state's key with the step, so a
    sequence gets a fresh mask each time it is seen and a resumed run draws the same ones."""
    return jax.random.split(jax.random.fold_in(jax.random.wrap_key_data(state_rng), step))


@contextlib.contextmanager
def activation_sharding(mesh: Mesh | None, rules):
    """Makes the model's `nn.with_logical_constraint`s bind: the mesh (abstract, valid inside
    jit) and the logical rules. Without both they are no-ops and GSPMD guesses."""
    if mesh is None or rules is None:
        yield
        return
    with jax.sharding.use_abstract_mesh(mesh.abstract_mesh), nn.logical_axis_rules(rules):
        yield


def _mlm_sums(model: nn.Module, params, inputs_BxL, targets_BxL, weights_BxL, pad_id: int,
              max_predictions: int, dropout_rng: jax.Array | None, mesh=None, rules=None):
    """(sum of fp32 cross-entropies, correct predictions) over scored positions; logits are
    computed only at the gathered scored positions."""
    positions_BxP, tgt_BxP, w_BxP = masking_lib.gather_scored(targets_BxL, weights_BxL,
                                                              max_predictions)
    deterministic = dropout_rng is None
    with activation_sharding(mesh, rules):
        logits_BxPxV = model.apply(
            {"params": params}, inputs_BxL, attention_mask=targets_BxL != pad_id,
            deterministic=deterministic, masked_positions=positions_BxP,
            rngs=None if deterministic else {"dropout": dropout_rng})
    logits_BxPxV = logits_BxPxV.astype(jnp.float32)
    xent_BxP = optax.softmax_cross_entropy_with_integer_labels(logits_BxPxV, tgt_BxP)
    correct_BxP = (jnp.argmax(logits_BxPxV, axis=-1) == tgt_BxP).astype(jnp.float32)
    return jnp.sum(xent_BxP * w_BxP), jnp.sum(correct_BxP * w_BxP)


def _split_micro(x_BxL: jax.Array, accum: int, mesh: Mesh | None) -> jax.Array:
    """(B, L) -> (A, B/A, L) with micro-batch a = rows a, a+A, a+2A, ...: each device's
    contiguous block of rows splits evenly over the micro-batches, so no rows move."""
    B, L = x_BxL.shape
    x_AxbxL = x_BxL.reshape(B // accum, accum, L).swapaxes(0, 1)
    if mesh is None:
        return x_AxbxL
    spec = jax.sharding.PartitionSpec(None, sharding_lib.BATCH_AXES, None)
    return jax.lax.with_sharding_constraint(x_AxbxL, NamedSharding(mesh, spec))


# ---------------------------------------------------------------------------- steps
def make_train_step(model: nn.Module, tx: optax.GradientTransformation, masking: MaskingConfig,
                    *, grad_accum_steps: int = 1, schedule: optax.Schedule | None = None,
                    mesh: Mesh | None = None, rules=None
                    ) -> Callable[[TrainState, jax.Array], tuple[TrainState, Metrics]]:
    """step_fn(state, tokens_BxL) -> (new_state, metrics). Pure; jit it with jit_train_step.

    mesh: when given, each micro-batch is constrained to the batch sharding (rows over
    data x fsdp); with `rules` too, the model's activation constraints bind as well.
    schedule: when given, metrics include 'learning_rate' (the rate of this update).
    """
    pad_id, accum = model.config.pad_token_id, int(grad_accum_steps)

    def step_fn(state: TrainState, tokens_BxL: jax.Array) -> tuple[TrainState, Metrics]:
        B, L = tokens_BxL.shape
        if B % accum:
            raise ConfigError(f"batch of {B} is not divisible by grad_accum_steps={accum}")
        mask_rng, dropout_rng = step_rngs(state.rng, state.step)
        # Mask the whole batch at once: bits at the global (B, L) shape make the masks
        # independent of mesh and of the micro-batch split.
        inputs_BxL, targets_BxL, weights_BxL = masking.mask(mask_rng, tokens_BxL)
        scored = jnp.sum(weights_BxL)
        P = masking.max_predictions(L)

        def micro_step(carry, xs):
            grads_acc, loss_acc, correct_acc = carry
            i, inputs, targets, weights = xs

            def loss_sum_fn(params):  # -> (loss sum, aux: correct predictions)
                return _mlm_sums(model, params, inputs, targets, weights, pad_id, P,
                                 jax.random.fold_in(dropout_rng, i), mesh, rules)

            (loss_sum, correct), grads = jax.value_and_grad(loss_sum_fn, has_aux=True)(
                state.params)
            grads_acc = jax.tree_util.tree_map(jnp.add, grads_acc, grads)
            return (grads_acc, loss_acc + loss_sum, correct_acc + correct), None

        xs = (jnp.arange(accum), *(_split_micro(x, accum, mesh) for x in
                                   (inputs_BxL, targets_BxL, weights_BxL)))
        zeros = jax.tree_util.tree_map(jnp.zeros_like, state.params)
        (grad_sums, loss_sum, correct), _ = jax.lax.scan(
            micro_step, (zeros, jnp.float32(0), jnp.float32(0)), xs)
        # One division by the global count: exact across devices and micro-batches.
        denom = jnp.maximum(scored, 1.0)
        grads = jax.tree_util.tree_map(lambda g: g / denom, grad_sums)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {"loss": loss_sum / denom, "mlm_accuracy": correct / denom,
                   "scored_tokens": scored, "grad_norm": optax.tree.norm(grads),
                   "param_norm": optax.tree.norm(params)}
        if schedule is not None:
            metrics["learning_rate"] = jnp.asarray(schedule(state.step), jnp.float32)
        new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
        return new_state, metrics

    return step_fn


def make_eval_step(model: nn.Module, masking: MaskingConfig, *, mesh: Mesh | None = None,
                   rules=None) -> Callable[[Any, jax.Array, jax.Array], Metrics]:
    """eval_fn(params, tokens_BxL, rng) -> {'loss_sum', 'correct_sum', 'weight_sum'}: sums,
    so the caller adds them over batches and divides once. No dropout."""
    pad_id = model.config.pad_token_id

    def eval_fn(params, tokens_BxL, rng):
        inputs, targets, weights = masking.mask(_as_key(rng), tokens_BxL)
        loss_sum, correct = _mlm_sums(model, params, inputs, targets, weights, pad_id,
                                      masking.max_predictions(tokens_BxL.shape[1]), None,
                                      mesh, rules)
        return {"loss_sum": loss_sum, "correct_sum": correct, "weight_sum": jnp.sum(weights)}

    return eval_fn


def jit_train_step(step_fn, state_shardings: TrainState, batch_sharding: NamedSharding):
    """jax.jit with explicit shardings; the input state is donated (updated in place)."""
    rep = sharding_lib.replicated(batch_sharding.mesh)
    return jax.jit(step_fn, in_shardings=(state_shardings, batch_sharding),
                   out_shardings=(state_shardings, rep), donate_argnums=0)


def jit_eval_step(eval_fn, params_shardings: Any, batch_sharding: NamedSharding):
    rep = sharding_lib.replicated(batch_sharding.mesh)
    return jax.jit(eval_fn, in_shardings=(params_shardings, batch_sharding, rep),
                   out_shardings=rep)
