"""Experiment configs: `configs/NAME.py[:ARG]` files with `--config.KEY=VALUE` overrides,
their validation, and the RobertaConfig an experiment's `model` entry names.

`model` is a preset name or a dict of RobertaConfig fields (optionally with `preset`); the
pretraining loop (train.py) and the workdir exporter (convert/workdir.py) both read it here.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib.util
import os
from typing import Any, Mapping, Sequence

import jax.numpy as jnp
import ml_collections

from roberta_jax.config import RobertaConfig
from roberta_jax.errors import ConfigError

_MODEL_FIELDS = {f.name: f for f in dataclasses.fields(RobertaConfig)}
REQUIRED_KEYS = (
    "seed", "steps", "batch_size", "seq_len", "grad_accum_steps", "optimizer", "learning_rate",
    "warmup_steps", "schedule", "weight_decay", "max_grad_norm", "dtype", "mesh.data",
    "mesh.fsdp", "mesh.tensor", "mesh.rules", "model", "data.path", "data.tokenizer",
    "log_every", "eval_every", "eval_batches", "checkpoint_every", "keep_checkpoints",
    "init_from")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def load_config(spec: str, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
    """`configs/NAME.py[:ARG]` -> its get_config(ARG), with `--config.KEY=VALUE` overrides."""
    path, _, arg = spec.partition(":")
    if not os.path.isfile(path):
        raise ConfigError(f"config file {path!r} does not exist")
    module_spec = importlib.util.spec_from_file_location("_roberta_jax_config", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ConfigError(f"config file {path!r} defines no get_config(arg=None)")
    cfg = module.get_config(arg or None)
    for override in overrides:
        apply_override(cfg, override)
    return cfg


def _parse_value(key: str, text: str, current: Any, kind: type | None) -> Any:
    """Text -> a value of the existing field's type; ConfigError naming the key otherwise."""
    if text in ("None", "none", "null"):
        return None
    kind = type(current) if current is not None else kind
    try:
        if kind is bool:
            if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(text)
            return text.lower() in ("true", "1", "yes")
        if kind is int:
            value = float(text)  # accepts 1e6
            if value != int(value):
                raise ValueError(text)
            return int(value)
        if kind is float:
            return float(text)
        if kind is str:
            return text
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        if kind in (None, type(None)) or current is None:
            return text  # an unset (None) field takes strings as they are
        raise ConfigError(f"--config.{key}={text!r}: expected {kind.__name__}") from None


def apply_override(cfg: ml_collections.ConfigDict, override: str) -> None:
    """Apply one `--config.KEY=VALUE` (dotted KEY must exist; model.* may name any
    RobertaConfig field)."""
    if not override.startswith("--config.") or "=" not in override:
        raise ConfigError(f"override {override!r} is not of the form --config.KEY=VALUE")
    key, text = override[len("--config."):].split("=", 1)
    *parents, leaf = key.split(".")
    node = cfg
    for i, name in enumerate(parents):
        if not isinstance(node, ml_collections.ConfigDict) or name not in node:
            raise ConfigError(f"unknown config key {'.'.join(parents[:i + 1])!r} "
                              f"(in --config.{key})")
        node = node[name]
    model_field = parents == ["model"] and leaf in _MODEL_FIELDS
    if not isinstance(node, ml_collections.ConfigDict) or (leaf not in node and not model_field):
        known = sorted(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
        raise ConfigError(f"unknown config key {key!r}; known keys here: {known}")
    if isinstance(node.get(leaf), ml_collections.ConfigDict):
        raise ConfigError(f"config key {key!r} is a group; set one of its keys "
                          f"{sorted(node[leaf].keys())}")
    kind = type(_MODEL_FIELDS[leaf].default) if model_field else None
    value = _parse_value(key, text, node.get(leaf), kind)
    try:
        node[leaf] = value
    except TypeError as e:
        raise ConfigError(f"--config.{key}={text!r}: {e}") from None


def validate_config(cfg: ml_collections.ConfigDict) -> None:
    for key in REQUIRED_KEYS:
        node = cfg
        for name in key.split("."):
            if not isinstance(node, ml_collections.ConfigDict) or name not in node:
                raise ConfigError(f"config is missing required key {key!r}")
            node = node[name]
    for key in ("steps", "batch_size", "seq_len", "grad_accum_steps", "log_every",
                "eval_every", "checkpoint_every", "keep_checkpoints"):
        if not isinstance(cfg[key], int) or cfg[key] < 1:
            raise ConfigError(f"config {key}={cfg[key]!r} must be an integer >= 1")
    if not isinstance(cfg.eval_batches, int) or cfg.eval_batches < 0:
        raise ConfigError(f"config eval_batches={cfg.eval_batches!r} must be an integer >= 0")
    if cfg.dtype not in DTYPES:
        raise ConfigError(f"config dtype={cfg.dtype!r} is not one of {sorted(DTYPES)}")
    if cfg.optimizer not in ("adamw", "lamb"):
        raise ConfigError(f"config optimizer={cfg.optimizer!r} is not 'adamw' or 'lamb'")
    if not cfg.data.path:
        raise ConfigError("config data.path is empty; pass --config.data.path=DIR "
                          "(a `roberta-jax prepare` output)")


def resolve_model_config(cfg: ml_collections.ConfigDict, data_meta: dict | None = None
                         ) -> RobertaConfig:
    """The RobertaConfig of an experiment config: `model` is a preset name or a dict of
    RobertaConfig fields (optionally with `preset`). Fields it leaves out that the prepared
    data decides (vocab_size and the special ids) come from the data's metadata."""
    model = cfg.model
    if isinstance(model, ml_collections.ConfigDict):
        model = model.to_dict()
    if data_meta is None and cfg.data.path and os.path.isdir(cfg.data.path):
        from roberta_jax.data import read_metadata

        data_meta = read_metadata(cfg.data.path)
    defaults = {}
    if data_meta is not None:
        for field, meta_key in (("vocab_size", "vocab_size"), ("pad_token_id", "pad_id"),
                                ("bos_token_id", "bos_id"), ("eos_token_id", "eos_id")):
            if meta_key in data_meta:
                defaults[field] = int(data_meta[meta_key])
    return model_config_from_spec(model, **defaults)


def model_config_from_spec(model: str | Mapping[str, Any], **defaults: Any) -> RobertaConfig:
    """A preset name, or a dict of RobertaConfig fields (optionally with `preset`) ->
    RobertaConfig; `defaults` fill the fields the dict leaves out."""
    fields = {"preset": model} if isinstance(model, str) else dict(model)
    preset = fields.pop("preset", None)
    unknown = sorted(set(fields) - set(_MODEL_FIELDS))
    if unknown:
        raise ConfigError(f"config model has keys that are not RobertaConfig fields: {unknown}")
    fields = {**defaults, **fields}
    return RobertaConfig.preset(preset, **fields) if preset else RobertaConfig(**fields)

