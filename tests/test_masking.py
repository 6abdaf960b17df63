"""Dynamic MLM masking: statistics with stated bounds, specials, determinism, sharding."""

import functools

import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from roberta_jax import masking

V, MASK = 1000, 999
SPECIALS = (0, 1, 2, 3, MASK)  # <s> <pad> </s> <unk> <mask>


def _batch(n: int, L: int, seed: int = 0) -> np.ndarray:
    """<s> tokens... </s> then <pad> to a per-row random length."""
    rs = np.random.RandomState(seed)
    toks = rs.randint(4, MASK, size=(n, L)).astype(np.int32)
    lengths = rs.randint(L // 2, L + 1, size=n)
    for i, n_real in enumerate(lengths):
        toks[i, 0], toks[i, n_real - 1], toks[i, n_real:] = 0, 2, 1
    return toks


mask_fn = jax.jit(functools.partial(masking.mask_tokens, vocab_size=V, mask_id=MASK,
                                    special_ids=SPECIALS))


@pytest.fixture(scope="module")
def big():
    toks = _batch(10_000, 128)
    inputs, targets, weights = map(np.asarray, mask_fn(jax.random.key(0), toks))
    return toks, inputs, targets, weights


def test_selected_fraction_and_split(big):
    toks, inputs, targets, weights = big
    maskable = ~np.isin(toks, SPECIALS)
    sel = weights > 0
    frac = sel.sum() / maskable.sum()
    assert abs(frac - 0.15) < 0.003, frac
    n = sel.sum()
    masked = (inputs == MASK) & sel
    rand = (inputs != MASK) & (inputs != targets) & sel
    kept = (inputs == targets) & sel
    # A random replacement equal to the original (p = 1/995) counts as kept; within tolerance.
    assert abs(masked.sum() / n - 0.8) < 0.01
    assert abs(rand.sum() / n - 0.1) < 0.01
    assert abs(kept.sum() / n - 0.1) < 0.01
    np.testing.assert_array_equal(targets, toks)
    np.testing.assert_array_equal(inputs[~sel], toks[~sel])  # only selected positions change
    assert weights.dtype == np.float32 and set(np.unique(weights)) <= {0.0, 1.0}


def test_per_row_count_is_rounded_fraction(big):
    toks, _, _, weights = big
    n = (~np.isin(toks, SPECIALS)).sum(1)
    k = (weights > 0).sum(1)
    lo = np.floor(0.15 * n)
    assert np.all((k == lo) | (k == lo + 1))
    # Probabilistic rounding: the mean count equals p*n to within 0.02 tokens per row.
    assert abs(k.mean() - 0.15 * n.mean()) < 0.02
    assert k.max() <= masking.max_predictions(128, 0.15)


def test_specials_never_selected_or_sampled(big):
    toks, inputs, _, weights = big
    assert weights[np.isin(toks, SPECIALS)].sum() == 0
    rand = (weights > 0) & (inputs != MASK) & (inputs != toks)
    assert rand.sum() > 10_000
    assert not np.isin(inputs[rand], SPECIALS).any()


def test_determinism_and_fresh_mask_per_step():
    toks = _batch(64, 64, seed=1)
    rng = jax.random.key(7)
    a = mask_fn(jax.random.fold_in(rng, 3), toks)
    b = mask_fn(jax.random.fold_in(rng, 3), toks)
    c = mask_fn(jax.random.fold_in(rng, 4), toks)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    same_w = np.mean(np.asarray(a[2]) == np.asarray(c[2]))
    # Two independent 15% masks agree on ~1 - 2*.15*.85 = 74.5% of positions, not 100%.
    assert same_w < 0.9


def test_jit_matches_eager():
    toks = _batch(16, 32, seed=2)
    eager = masking.mask_tokens(jax.random.key(1), toks, vocab_size=V, mask_id=MASK,
                                special_ids=SPECIALS)
    for x, y in zip(eager, mask_fn(jax.random.key(1), toks)):
        np.testing.assert_array_equal(x, y)


def test_rates_configurable():
    toks = _batch(2000, 128, seed=3)
    fn = jax.jit(functools.partial(masking.mask_tokens, vocab_size=V, mask_id=MASK,
                                   special_ids=SPECIALS, mask_prob=0.3, replace_with_mask=1.0,
                                   replace_with_random=0.0))
    inputs, _, weights = map(np.asarray, fn(jax.random.key(0), toks))
    sel = weights > 0
    assert abs(sel.sum() / (~np.isin(toks, SPECIALS)).sum() - 0.3) < 0.005
    assert np.all(inputs[sel] == MASK)


def test_gather_scored_round_trip():
    toks = _batch(256, 128, seed=4)
    inputs, targets, weights = mask_fn(jax.random.key(3), toks)
    P_ = masking.max_predictions(128, 0.15)
    assert P_ == 21
    pos, tgt, w = jax.jit(masking.gather_scored, static_argnums=2)(targets, weights, P_)
    pos, tgt, w = map(np.asarray, (pos, tgt, w))
    assert pos.shape == tgt.shape == w.shape == (256, P_) and pos.dtype == np.int32
    dense = np.zeros((256, 128), np.float32)
    # Padding points at position 0 (always <s> here) with weight 0.
    np.put_along_axis(dense, pos, w, axis=1)
    np.testing.assert_array_equal(dense, np.asarray(weights))
    np.testing.assert_array_equal(tgt[w > 0], np.take_along_axis(toks, pos, 1)[w > 0])
    assert w.sum() == np.asarray(weights).sum()


def test_whole_word_masking():
    rs = np.random.RandomState(5)
    word_start = rs.rand(V) < 0.5
    word_start[list(SPECIALS)] = False
    toks = _batch(4000, 128, seed=5)
    fn = jax.jit(functools.partial(masking.mask_tokens, vocab_size=V, mask_id=MASK,
                                   special_ids=SPECIALS))
    inputs, _, weights = map(np.asarray, fn(jax.random.key(0), toks, word_start=word_start))
    maskable = ~np.isin(toks, SPECIALS)
    starts = maskable & (word_start[toks] | ~np.pad(maskable[:, :-1], ((0, 0), (1, 0))))
    word_id = np.cumsum(starts, axis=1)
    sel = weights > 0
    for b in range(200):  # every token of a word shares its word's selection and action
        for w in np.unique(word_id[b][maskable[b]]):
            m = maskable[b] & (word_id[b] == w)
            assert sel[b][m].all() or not sel[b][m].any()
            if sel[b][m].all():
                is_mask = inputs[b][m] == MASK
                assert is_mask.all() or not is_mask.any()
    n_words, n_sel_words = starts.sum(), (starts & sel).sum()
    assert abs(n_sel_words / n_words - 0.15) < 0.005
    assert weights[~maskable].sum() == 0


def test_sharded_equals_unsharded():
    assert jax.device_count() == 8
    mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    sh = NamedSharding(mesh, P("data", None))
    toks = _batch(64, 64, seed=6)
    rng = jax.random.key(11)
    ref = mask_fn(rng, toks)
    sharded_fn = jax.jit(functools.partial(masking.mask_tokens, vocab_size=V, mask_id=MASK,
                                           special_ids=SPECIALS),
                         in_shardings=(None, sh), out_shardings=(sh, sh, sh))
    out = sharded_fn(rng, jax.device_put(toks, sh))
    assert out[0].sharding == sh
    for x, y in zip(ref, out):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
