"""Shared by the pretraining tests: a tiny corpus (tokenizer + prepared blocks) and one
uninterrupted reference run, each built once per session (memoised here, since fixtures
imported into several test modules would otherwise be built once per module)."""

from __future__ import annotations

import json
import os

CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                      "configs", "tiny.py")
STEPS = 6
_cache: dict = {}


def tiny_overrides(corpus: dict, **extra) -> list[str]:
    """configs/tiny.py shrunk to hidden 32, 2 layers, seq 32, batch 16, 6 steps."""
    values = {"data.path": corpus["data"], "data.tokenizer": corpus["tokenizer"], "seq_len": 32,
              "model.hidden_size": 32, "model.num_attention_heads": 2,
              "model.intermediate_size": 64, "model.max_position_embeddings": 40,
              "model.hidden_dropout_prob": 0.1, "model.attention_probs_dropout_prob": 0.1,
              "steps": STEPS, "batch_size": 16, "learning_rate": 1e-3, "warmup_steps": 2,
              "log_every": 1,
              "eval_every": STEPS, "eval_batches": 2, "checkpoint_every": 3,
              "keep_checkpoints": 3, **extra}
    return [f"--config.{k}={v}" for k, v in values.items()]


def corpus(tmp_path_factory) -> dict:
    """A 512-id tokenizer and seq-32 blocks of a slice of the shipped corpus."""
    if "corpus" not in _cache:
        from roberta_jax.data.prepare import prepare
        from roberta_jax.data.sources import SourceStats, iter_documents
        from roberta_jax.data.tokenizer import train_tokenizer

        root = tmp_path_factory.mktemp("corpus")
        docs = iter_documents(["default"], SourceStats())
        text = root / "slice.txt"
        text.write_text("\n\n".join(next(docs) for _ in range(16))[:200_000])
        train_tokenizer([str(text)], str(root / "tokenizer"), vocab_size=512)
        prepare([str(text)], str(root / "data"), tokenizer=str(root / "tokenizer"), seq_len=32,
                validation_fraction=0.2, doc_split="blank-line", num_workers=1)
        _cache["corpus"] = {"tokenizer": str(root / "tokenizer"), "data": str(root / "data")}
    return _cache["corpus"]


def read_metrics(workdir) -> list[dict]:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def train_losses(workdir) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(workdir) if "loss" in r}


def reference_run(tmp_path_factory) -> dict:
    """One uninterrupted 6-step run on mesh data=8, its loop under
    jax.transfer_guard("disallow"): {'workdir', 'losses', 'result'}."""
    if "reference" not in _cache:
        from roberta_jax.train import load_config, pretrain

        workdir = tmp_path_factory.mktemp("reference") / "wd"
        cfg = load_config(CONFIG, tiny_overrides(corpus(tmp_path_factory)))
        # The loop runs under transfer_guard("disallow"): every host<->device copy in it
        # (batches in, metrics out, checkpoints) must be explicit.
        result = pretrain(cfg, str(workdir), transfer_guard="disallow")
        _cache["reference"] = {"workdir": str(workdir), "losses": train_losses(workdir),
                               "result": result}
    return _cache["reference"]
