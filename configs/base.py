"""RoBERTa-base pretraining with the paper's recipe (Liu et al. 2019, Table 9).

Run on a pod (see docs/pretraining.md for TPU pod slices and SLURM):
    roberta-jax pretrain --config configs/base.py --workdir gs://BUCKET/roberta-base \
        --config.data.path=/data/prepared512 --config.data.tokenizer=/data/tokenizer

Recipe: batch 8K sequences of 512 tokens, 500K steps, AdamW (b1 0.9, b2 0.98, eps 1e-6,
weight decay 0.01), peak lr 6e-4 after 24K linear warmup steps, then linear decay to 0,
dropout 0.1, no gradient clipping (Table 9 lists clipping 0.0; set
`--config.max_grad_norm=1.0` if bfloat16 runs spike). What it should show: eval perplexity
falling below ~4 by the end (the paper's base model reaches ~3.7 on its held-out data).
Memory: raise grad_accum_steps (the batch stays 8K) if the per-device micro-batch is too big.
"""

import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.steps = 500_000
    c.batch_size = 8192
    c.seq_len = 512
    c.grad_accum_steps = 1

    c.optimizer = "adamw"
    c.learning_rate = 6e-4
    c.end_learning_rate = 0.0
    c.warmup_steps = 24_000
    c.schedule = "linear"
    c.weight_decay = 0.01
    c.max_grad_norm = 0.0
    c.adam_b1 = 0.9
    c.adam_b2 = 0.98
    c.adam_eps = 1e-6
    c.dtype = "bfloat16"

    c.mesh = ml_collections.ConfigDict()
    c.mesh.data = -1
    c.mesh.fsdp = 1
    c.mesh.tensor = 1
    c.mesh.rules = None

    # vocab_size (and special ids) default to the prepared data's tokenizer (50265 for GPT-2 BPE).
    c.model = ml_collections.ConfigDict(dict(preset="base", scan_layers=True))

    c.data = ml_collections.ConfigDict()
    c.data.path = ""              # required: a `roberta-jax prepare --seq-len 512` directory
    c.data.tokenizer = None       # optional: checked against the data's tokenizer hash
    c.data.worker_count = 4

    c.mask_prob = 0.15
    c.whole_word_masking = False

    c.log_every = 100
    c.eval_every = 10_000
    c.eval_batches = 16
    c.checkpoint_every = 5_000
    c.keep_checkpoints = 3
    c.init_from = None
    return c
