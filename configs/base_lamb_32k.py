"""RoBERTa-base with LAMB at batch 32K, in the style of You et al. 2019 ("Large Batch
Optimization for Deep Learning: Training BERT in 76 minutes").

Run:
    roberta-jax pretrain --config configs/base_lamb_32k.py --workdir gs://BUCKET/base-lamb \
        --config.data.path=/data/prepared512

Choices (stated, not copied from a released script): the same number of sequences as
configs/base.py (8K x 500K = 32K x 125K steps); peak lr scaled from AdamW's 6e-4 by the
square root of the batch ratio (6e-4 * sqrt(32K / 8K) = 1.2e-3, You et al.'s rule), warmup
over the same number of sequences (24K / 4 = 6K steps), polynomial (power 1) decay to 0 as in
BERT, LAMB's b2 0.999 and eps 1e-6, weight decay 0.01, clipping at 1.0. What it should show:
eval perplexity close to configs/base.py's at equal sequences seen, in 4x fewer steps.
"""

import os
import runpy

import ml_collections

# The paper's base recipe; this file states only what differs from it.
_base = runpy.run_path(os.path.join(os.path.dirname(os.path.abspath(__file__)), "base.py"))


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = _base["get_config"](arg)
    c.steps = 125_000
    c.batch_size = 32_768
    c.grad_accum_steps = 4       # 8K sequences per micro-batch, as the AdamW recipe's step
    c.optimizer = "lamb"
    c.learning_rate = 1.2e-3
    c.warmup_steps = 6_000
    c.schedule = "polynomial"
    c.poly_power = 1.0
    c.max_grad_norm = 1.0
    c.adam_b2 = 0.999
    c.eval_every = 5_000
    c.checkpoint_every = 2_500
    return c
