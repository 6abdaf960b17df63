"""Dynamic MLM masking: pure, jittable, identical sharded or unsharded.

Run inside the train step with `jax.random.fold_in(rng, step)` so a sequence gets a new mask
every time it is seen (RoBERTa's dynamic masking). Random bits are drawn at the full (B, L)
shape; with JAX's partitionable threefry (the default) each element's bits depend only on its
global index, so sharding the batch over devices gives the same masks as one device.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np


def max_predictions(seq_len: int, mask_prob: float = 0.15) -> int:
    """A number of scored positions per sequence that `mask_tokens` never exceeds.

    At most floor(p * n + u) <= floor(p * L) + 1 positions are selected, u in [0, 1).
    """
    return math.ceil(mask_prob * seq_len) + 1


def _non_special_ids(vocab_size: int, special_ids: Sequence[int]) -> np.ndarray:
    ids = np.setdiff1d(np.arange(vocab_size, dtype=np.int32), np.asarray(special_ids, np.int32))
    if ids.size == 0:
        raise ValueError(f"no non-special ids in a vocab of {vocab_size} with specials {special_ids}")
    return ids


def mask_tokens(
    rng: jax.Array,
    tokens: jax.Array,
    *,
    vocab_size: int,
    mask_id: int,
    special_ids: Sequence[int],
    mask_prob: float = 0.15,
    replace_with_mask: float = 0.8,
    replace_with_random: float = 0.1,
    word_start: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Select and corrupt MLM positions.

    tokens: int (B, L). special_ids: static Python ints, never selected (`<s>`, `</s>`, `<pad>`,
    ...). Per row, k = floor(mask_prob * n + U[0, 1)) of the n maskable tokens are selected
    (fairseq's count with probabilistic rounding); of those `replace_with_mask` become
    `mask_id`, `replace_with_random` a uniformly random non-special id, the rest keep their id.
    word_start: optional bool (vocab_size,) table; when given, whole words are selected
    (k counts words) and every token of a selected word is corrupted the same way.

    Returns (inputs, targets, weights): inputs with the corruption applied, targets = tokens,
    weights float32 1.0 at selected positions else 0.0; all (B, L).
    """
    tokens = jnp.asarray(tokens)
    B, L = tokens.shape
    specials = jnp.asarray(sorted(set(int(s) for s in special_ids)), dtype=tokens.dtype)
    maskable_BxL = ~jnp.isin(tokens, specials)

    k_select, k_round, k_action, k_random = jax.random.split(rng, 4)
    pos_BxL = jnp.broadcast_to(jnp.arange(L, dtype=jnp.int32), (B, L))
    if word_start is None:
        unit_start_BxL = maskable_BxL
    else:
        prev_maskable = jnp.pad(maskable_BxL[:, :-1], ((0, 0), (1, 0)))
        # A word starts at a `Ġ` token or right after a special token / sequence start.
        unit_start_BxL = maskable_BxL & (jnp.asarray(word_start)[tokens] | ~prev_maskable)
    # Index of the unit (token or word) each position belongs to: the latest unit start.
    owner_BxL = jax.lax.cummax(jnp.where(unit_start_BxL, pos_BxL, -1), axis=1)
    owner_BxL = jnp.maximum(owner_BxL, 0)

    n_B = unit_start_BxL.sum(axis=1).astype(jnp.float32)
    u_B = jax.random.uniform(k_round, (B,))
    k_B = jnp.floor(mask_prob * n_B + u_B).astype(jnp.int32)
    k_B = jnp.minimum(k_B, n_B.astype(jnp.int32))

    # Choose k units uniformly without replacement: rank random scores among unit starts.
    scores_BxL = jax.random.uniform(k_select, (B, L))
    scores_BxL = jnp.where(unit_start_BxL, scores_BxL, 2.0)  # non-starts rank last
    order_BxL = jnp.argsort(scores_BxL, axis=1, stable=True)
    rank_BxL = jnp.argsort(order_BxL, axis=1, stable=True)
    chosen_start_BxL = unit_start_BxL & (rank_BxL < k_B[:, None])

    # Each unit decides mask / random / keep once, at its start; its tokens inherit it.
    action_u_BxL = jax.random.uniform(k_action, (B, L))
    take = lambda x: jnp.take_along_axis(x, owner_BxL, axis=1)  # noqa: E731
    selected_BxL = maskable_BxL & take(chosen_start_BxL)
    action_BxL = take(action_u_BxL)
    to_mask = selected_BxL & (action_BxL < replace_with_mask)
    to_random = selected_BxL & ~to_mask & (action_BxL < replace_with_mask + replace_with_random)

    pool = jnp.asarray(_non_special_ids(vocab_size, special_ids))
    random_BxL = pool[jax.random.randint(k_random, (B, L), 0, pool.shape[0])].astype(tokens.dtype)
    inputs = jnp.where(to_mask, jnp.asarray(mask_id, tokens.dtype), tokens)
    inputs = jnp.where(to_random, random_BxL, inputs)
    return inputs, tokens, selected_BxL.astype(jnp.float32)


def gather_scored(
    targets: jax.Array, weights: jax.Array, max_predictions: int
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Fixed-size gather of the scored positions, so the MLM head computes logits only there.

    Returns positions (B, P) int32 (scored positions in increasing order, then padding at
    position 0), targets (B, P) and weights (B, P) with weight 0 on padding. P must be at least
    the number of scored positions of every row (`max_predictions(seq_len, mask_prob)` is).
    """
    B, L = weights.shape
    scored_BxL = weights > 0
    # Stable sort puts scored positions first, each group in position order.
    order_BxL = jnp.argsort(~scored_BxL, axis=1, stable=True).astype(jnp.int32)
    P = min(max_predictions, L)
    positions_BxP = order_BxL[:, :P]
    valid_BxP = jnp.take_along_axis(scored_BxL, positions_BxP, axis=1)
    positions_BxP = jnp.where(valid_BxP, positions_BxP, 0)
    if max_predictions > L:
        pad = ((0, 0), (0, max_predictions - L))
        positions_BxP, valid_BxP = jnp.pad(positions_BxP, pad), jnp.pad(valid_BxP, pad)
    tgt_BxP = jnp.take_along_axis(targets, positions_BxP, axis=1)
    w_BxP = jnp.where(valid_BxP, jnp.take_along_axis(weights, positions_BxP, axis=1), 0.0)
    return positions_BxP, tgt_BxP, w_BxP.astype(jnp.float32)
