"""Tiny RoBERTa on the shipped Jane Austen corpus: the CPU demo (a few minutes on 2 cores).

Run (after `scripts/demo.sh` has made the tokenizer and prepared data, or make them yourself):
    roberta-jax tokenizer train default --out demo_out/tokenizer --vocab-size 8192
    roberta-jax prepare default --tokenizer demo_out/tokenizer --seq-len 128 --out demo_out/data \
        --validation-fraction 0.05
    roberta-jax pretrain --config configs/tiny.py --workdir demo_out/workdir

What it should show: the training loss falls from ~9.0 (ln 8192) to ~5.9 and the held-out
`eval` lines' MLM accuracy rises from ~0.11 (step 200) to ~0.145 (step 1000), in about four
minutes on 2 CPU cores (measured run in docs/pretraining.md). Every key can be overridden, e.g.
`--config.steps=100 --config.warmup_steps=10 --config.model.hidden_size=64` (warmup_steps must
stay below steps).
"""

import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.steps = 1000
    c.batch_size = 32             # global sequences per optimizer step
    c.seq_len = 128               # must equal the prepared data's seq_len
    c.grad_accum_steps = 1

    c.optimizer = "adamw"
    c.learning_rate = 2e-3        # a small model with a small batch tolerates a high rate
    c.end_learning_rate = 0.0
    c.warmup_steps = 100
    c.schedule = "linear"
    c.weight_decay = 0.01
    c.max_grad_norm = 1.0
    c.adam_b1 = 0.9
    c.adam_b2 = 0.98
    c.adam_eps = 1e-6
    c.dtype = "float32"           # CPUs run bfloat16 matmuls slower than float32

    c.mesh = ml_collections.ConfigDict()
    c.mesh.data = -1
    c.mesh.fsdp = 1
    c.mesh.tensor = 1
    c.mesh.rules = None           # a sharding.RULE_PRESETS name; None: chosen from the mesh

    # vocab_size (and special ids) default to the prepared data's tokenizer.
    # No dropout: a model this small underfits in a few minutes; dropout only slows it.
    c.model = ml_collections.ConfigDict(dict(preset="tiny", max_position_embeddings=130,
                                             hidden_dropout_prob=0.0,
                                             attention_probs_dropout_prob=0.0))

    c.data = ml_collections.ConfigDict()
    c.data.path = "demo_out/data"
    c.data.tokenizer = "demo_out/tokenizer"
    c.data.worker_count = 0

    c.mask_prob = 0.15
    c.whole_word_masking = False

    c.log_every = 50
    c.eval_every = 200
    c.eval_batches = 8
    c.checkpoint_every = 500
    c.keep_checkpoints = 2
    c.init_from = None
    return c
