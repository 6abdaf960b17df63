"""RobertaConfig: a frozen dataclass whose fields mirror Hugging Face's config.json.

The HF fields are read from and written to config.json; a few implementation knobs
(`scan_layers`, `remat_policy`, `attention_impl`) are ours and never written there.
"""

from __future__ import annotations

import dataclasses
import json
import numbers
import os
from typing import Any

from roberta_jax.errors import ConfigError
from roberta_jax.files import write_text_atomic

ACTIVATIONS = ("gelu", "gelu_new", "gelu_pytorch_tanh", "relu", "silu", "swish", "tanh")
REMAT_POLICIES = ("none", "full", "dots", "dots_no_batch")
ATTENTION_IMPLS = ("xla", "cudnn")

# Fields transformers' RobertaConfig falls back to when config.json omits them. They differ
# from roberta-base's published values (eps 1e-12 vs 1e-5, 512 vs 514 positions), so a
# config.json missing a key must be read with these, exactly as transformers reads it.
_HF_DEFAULTS = dict(
    vocab_size=50265, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
    intermediate_size=3072, hidden_act="gelu", hidden_dropout_prob=0.1,
    attention_probs_dropout_prob=0.1, max_position_embeddings=512, type_vocab_size=2,
    initializer_range=0.02, layer_norm_eps=1e-12, pad_token_id=1, bos_token_id=0,
    eos_token_id=2, classifier_dropout=None,
)
_IMPL_FIELDS = ("scan_layers", "remat_policy", "attention_impl")
_INT_FIELDS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
               "intermediate_size", "max_position_embeddings", "type_vocab_size", "pad_token_id",
               "num_labels")
_FLOAT_FIELDS = ("hidden_dropout_prob", "attention_probs_dropout_prob", "initializer_range",
                 "layer_norm_eps")


@dataclasses.dataclass(frozen=True)
class RobertaConfig:
    """Model hyperparameters. Defaults are roberta-base's published config.json."""

    vocab_size: int = 50265
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 514
    type_vocab_size: int = 1
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-5
    pad_token_id: int = 1
    bos_token_id: int = 0
    eos_token_id: int = 2
    classifier_dropout: float | None = None
    # Task heads: labels in id order (id2label[i] == id2label_names[i]).
    num_labels: int = 2
    id2label_names: tuple[str, ...] | None = None
    # Implementation knobs (not part of HF config.json).
    scan_layers: bool = False
    remat_policy: str = "none"
    attention_impl: str = "xla"

    def __post_init__(self):
        # Type checks first: a string "768" from a hand-edited config.json must not surface
        # as an arithmetic TypeError further down.
        for name in _INT_FIELDS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                raise ConfigError(f"{name}={value!r} must be an integer")
        for name in _FLOAT_FIELDS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                raise ConfigError(f"{name}={value!r} must be a number")
        if self.hidden_size % self.num_attention_heads:
            raise ConfigError(
                f"hidden_size={self.hidden_size} is not divisible by "
                f"num_attention_heads={self.num_attention_heads}")
        for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                     "intermediate_size", "max_position_embeddings", "type_vocab_size"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"{name}={getattr(self, name)} must be >= 1")
        if self.hidden_act not in ACTIVATIONS:
            raise ConfigError(f"hidden_act={self.hidden_act!r} is not one of {ACTIVATIONS}")
        if self.remat_policy not in REMAT_POLICIES:
            raise ConfigError(f"remat_policy={self.remat_policy!r} is not one of {REMAT_POLICIES}")
        if self.attention_impl not in ATTENTION_IMPLS:
            raise ConfigError(
                f"attention_impl={self.attention_impl!r} is not one of {ATTENTION_IMPLS}")
        if not 0 <= self.pad_token_id < self.vocab_size:
            raise ConfigError(
                f"pad_token_id={self.pad_token_id} is outside the vocabulary (size {self.vocab_size})")
        if self.max_position_embeddings <= self.pad_token_id + 1:
            raise ConfigError(
                f"max_position_embeddings={self.max_position_embeddings} leaves no positions: "
                f"real tokens start at pad_token_id+1={self.pad_token_id + 1}")
        if self.id2label_names is not None:
            object.__setattr__(self, "id2label_names", tuple(self.id2label_names))
            if len(self.id2label_names) != self.num_labels:
                raise ConfigError(f"num_labels={self.num_labels} but {len(self.id2label_names)} "
                                  f"label names were given")

    # ------------------------------------------------------------------ derived values
    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def max_sequence_length(self) -> int:
        """Longest input: position ids run from pad+1 to pad+L, and must be < max positions."""
        return self.max_position_embeddings - self.pad_token_id - 1

    @property
    def id2label(self) -> dict[int, str]:
        names = self.id2label_names or tuple(f"LABEL_{i}" for i in range(self.num_labels))
        return dict(enumerate(names))

    def replace(self, **changes) -> "RobertaConfig":
        return dataclasses.replace(self, **changes)

    # ------------------------------------------------------------------ HF config.json
    @classmethod
    def from_hf_dict(cls, d: dict[str, Any], **overrides) -> "RobertaConfig":
        model_type = d.get("model_type")
        if model_type not in ("roberta", "xlm-roberta", None):
            raise ConfigError(f"config.json has model_type={model_type!r}; roberta_jax reads "
                              f"only model_type 'roberta'")
        pet = d.get("position_embedding_type", "absolute")
        if pet != "absolute":
            raise ConfigError(f"position_embedding_type={pet!r} is not supported (only 'absolute')")
        kw = {k: d.get(k, v) for k, v in _HF_DEFAULTS.items()}
        if "id2label" in d and d["id2label"]:
            try:
                id2label = {int(k): v for k, v in dict(d["id2label"]).items()}
            except (TypeError, ValueError):
                raise ConfigError(f"id2label={d['id2label']!r} is not a mapping of label ids "
                                  f"to names") from None
            if sorted(id2label) != list(range(len(id2label))):
                raise ConfigError(f"id2label ids {sorted(id2label)} are not 0..{len(id2label) - 1}")
            names = tuple(id2label[i] for i in range(len(id2label)))
            # transformers writes LABEL_i when no names were given; keep "no names" as None.
            default = tuple(f"LABEL_{i}" for i in range(len(names)))
            kw["id2label_names"] = None if names == default else names
            kw["num_labels"] = len(id2label)
        elif "num_labels" in d:
            kw["num_labels"] = int(d["num_labels"])
        for k in _IMPL_FIELDS:
            if k in d.get("roberta_jax", {}):
                kw[k] = d["roberta_jax"][k]
        kw.update(overrides)
        return cls(**kw)

    def to_hf_dict(self, architectures: list[str] | None = None) -> dict[str, Any]:
        """A config.json that transformers' AutoConfig reads back as this model."""
        d: dict[str, Any] = {"model_type": "roberta"}
        if architectures:
            d["architectures"] = list(architectures)
        for k in _HF_DEFAULTS:
            d[k] = getattr(self, k)
        d["position_embedding_type"] = "absolute"
        d["id2label"] = {str(i): n for i, n in self.id2label.items()}
        d["label2id"] = {n: i for i, n in self.id2label.items()}
        d["tie_word_embeddings"] = True
        d["roberta_jax"] = {k: getattr(self, k) for k in _IMPL_FIELDS}
        return d

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, **overrides) -> "RobertaConfig":
        """Read `path/config.json` (or `path` itself if it is a JSON file)."""
        path = os.fspath(path)
        file = os.path.join(path, "config.json") if os.path.isdir(path) else path
        if not os.path.isfile(file):
            raise ConfigError(f"no config.json at {path!r}")
        try:
            with open(file) as f:
                d = json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ConfigError(f"{file} is not valid JSON: {e}") from None
        if not isinstance(d, dict):
            raise ConfigError(f"{file} holds a JSON {type(d).__name__}, not an object of config fields")
        return cls.from_hf_dict(d, **overrides)

    def save(self, directory: str | os.PathLike, architectures: list[str] | None = None) -> str:
        os.makedirs(directory, exist_ok=True)
        return write_text_atomic(os.path.join(directory, "config.json"), json.dumps(
            self.to_hf_dict(architectures), indent=2, sort_keys=True) + "\n")

    # ------------------------------------------------------------------ presets
    @classmethod
    def preset(cls, name: str, **overrides) -> "RobertaConfig":
        if name not in PRESETS:
            raise ConfigError(f"unknown model preset {name!r}; choose one of {sorted(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})


PRESETS: dict[str, dict[str, Any]] = {
    # roberta-base / roberta-large as published (125M / 355M parameters).
    "base": dict(),
    "large": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                  intermediate_size=4096),
    # A CPU-sized model for demos and tests; vocab matches the demo tokenizer.
    "tiny": dict(vocab_size=8192, hidden_size=128, num_hidden_layers=2, num_attention_heads=4,
                 intermediate_size=512, max_position_embeddings=130),
}
