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

import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.steps = 125_000
    c.batch_size = 32_768
    c.seq_len = 512
    c.grad_accum_steps = 4       # 8K sequences per micro-batch, as the AdamW recipe's step

    c.optimizer = "lamb"
    c.learning_rate = 1.2e-3
    c.end_learning_rate = 0.0
    c.warmup_steps = 6_000
    c.schedule = "polynomial"
    c.poly_power = 1.0
    c.weight_decay = 0.01
    c.max_grad_norm = 1.0
    c.adam_b1 = 0.9
    c.adam_b2 = 0.999
    c.adam_eps = 1e-6
    c.dtype = "bfloat16"

    c.mesh = ml_collections.ConfigDict()
    c.mesh.data = -1
    c.mesh.fsdp = 1
    c.mesh.tensor = 1
    c.mesh.rules = None

    c.model = ml_collections.ConfigDict(dict(preset="base", scan_layers=True))

    c.data = ml_collections.ConfigDict()
    c.data.path = ""
    c.data.tokenizer = None
    c.data.worker_count = 4

    c.mask_prob = 0.15
    c.whole_word_masking = False

    c.log_every = 100
    c.eval_every = 5_000
    c.eval_batches = 16
    c.checkpoint_every = 2_500
    c.keep_checkpoints = 3
    c.init_from = None
    return c
