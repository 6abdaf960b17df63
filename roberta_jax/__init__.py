"""roberta_jax: RoBERTa in JAX/Flax, exact to Hugging Face PyTorch.

Public API (heavy modules load on first use; torch only when a PyTorch file is touched):
    RobertaConfig, from_pretrained, save_pretrained, make_model, tasks, masking, data
"""

from __future__ import annotations

import importlib

from roberta_jax.config import RobertaConfig

__all__ = ["RobertaConfig", "from_pretrained", "save_pretrained", "make_model", "tasks",
           "masking", "data"]

_LAZY = {"from_pretrained": ("roberta_jax.convert", "from_pretrained"),
         "save_pretrained": ("roberta_jax.convert", "save_pretrained"),
         "make_model": ("roberta_jax.model", "make_model")}


def __getattr__(name: str):
    if name in _LAZY:
        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(module), attr)
    elif name == "tasks":
        value = tuple(importlib.import_module("roberta_jax.model").TASKS)
    elif name in ("masking", "data"):
        value = importlib.import_module(f"roberta_jax.{name}")
    else:
        raise AttributeError(f"module 'roberta_jax' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
