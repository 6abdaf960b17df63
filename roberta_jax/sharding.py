"""Mesh, logical-axis rule presets, and the shardings of state and batch.

Physical mesh axes ('data', 'fsdp', 'tensor') appear only here. The model names logical
axes (weights: vocab, embed, mlp, heads, kv, layers; activations: act_*); a preset maps each
to mesh axes. The batch is always split over ('data', 'fsdp'): FSDP is data parallelism
whose parameters and optimizer state are additionally sharded over 'fsdp'.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import flax.linen as nn
import jax
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from roberta_jax.errors import ConfigError

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

Rules = tuple[tuple[str, "str | tuple[str, ...] | None"], ...]

# Activations are the same in every preset except where tensor parallelism splits them.
_ACTS_REPLICATED_FEATURES: Rules = (
    ("act_batch", BATCH_AXES), ("act_len", None), ("act_embed", None),
    ("act_heads", None), ("act_mlp", None), ("act_vocab", None),
)
_ACTS_TENSOR: Rules = (
    ("act_batch", BATCH_AXES), ("act_len", None), ("act_embed", None),
    ("act_heads", "tensor"), ("act_mlp", "tensor"), ("act_vocab", None),
)
# The vocabulary stays unsplit in every preset: roberta's 50265 is odd, so it divides no
# tensor size, and the logits are only computed at the ~15% scored positions anyway.
RULE_PRESETS: dict[str, Rules] = {
    # Pure data parallelism: every weight replicated.
    "dp": (("vocab", None), ("embed", None), ("mlp", None), ("heads", None), ("kv", None),
           ("layers", None), *_ACTS_REPLICATED_FEATURES),
    # FSDP (ZeRO-3 style): every matrix and LayerNorm vector is split along its hidden
    # (embed) dimension; XLA all-gathers a layer's weights right before use.
    "fsdp": (("vocab", None), ("embed", "fsdp"), ("mlp", None), ("heads", None), ("kv", None),
             ("layers", None), *_ACTS_REPLICATED_FEATURES),
    # Megatron: q/k/v split by heads (column parallel), attention output by heads (row
    # parallel); FFN in column-parallel, out row-parallel, so each block needs one all-reduce.
    "tp": (("vocab", None), ("embed", None), ("mlp", "tensor"), ("heads", "tensor"),
           ("kv", None), ("layers", None), *_ACTS_TENSOR),
    "fsdp_tp": (("vocab", None), ("embed", "fsdp"), ("mlp", "tensor"), ("heads", "tensor"),
                ("kv", None), ("layers", None), *_ACTS_TENSOR),
}


def make_mesh(data: int, fsdp: int, tensor: int, devices: Sequence[Any] | None = None) -> Mesh:
    """A ('data', 'fsdp', 'tensor') mesh with Auto axes; one size may be -1 (the rest)."""
    devices = list(jax.devices() if devices is None else devices)
    n = len(devices)
    sizes = [int(data), int(fsdp), int(tensor)]
    named = ", ".join(f"{a}={s}" for a, s in zip(MESH_AXES, sizes))
    if sizes.count(-1) > 1:
        raise ConfigError(f"mesh {named}: at most one axis may be -1")
    if any(s == 0 or s < -1 for s in sizes):
        raise ConfigError(f"mesh {named}: sizes must be positive (or -1 for the rest)")
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if n % known:
            raise ConfigError(f"mesh {named}: {n} devices are not divisible by {known}")
        sizes[sizes.index(-1)] = n // known
    if math.prod(sizes) != n:
        raise ConfigError(f"mesh {named} has {math.prod(sizes)} devices but {n} are available; "
                          f"the sizes must multiply to the device count (use -1 for the rest)")
    # Auto axes: GSPMD propagates shardings from in/out shardings and logical constraints.
    return jax.make_mesh(tuple(sizes), MESH_AXES, axis_types=(AxisType.Auto,) * 3,
                         devices=devices)


def rules_for(mesh: Mesh, preset: str | None = None) -> Rules:
    """The rule table of `preset`; None picks it from which mesh axes are larger than 1."""
    if preset is None:
        fsdp, tensor = mesh.shape["fsdp"] > 1, mesh.shape["tensor"] > 1
        preset = "fsdp_tp" if fsdp and tensor else "fsdp" if fsdp else "tp" if tensor else "dp"
    if preset not in RULE_PRESETS:
        raise ConfigError(f"unknown sharding preset {preset!r}; choose one of {list(RULE_PRESETS)}")
    return RULE_PRESETS[preset]


def shardings_of(boxed_tree: Any, mesh: Mesh, rules: Rules) -> Any:
    """NamedShardings for a tree of nn.Partitioned boxes (or abstract arrays in them);
    unboxed leaves are replicated."""
    specs = nn.get_partition_spec(boxed_tree)
    return nn.logical_to_mesh_sharding(specs, mesh, rules)


def logical_sharding(mesh: Mesh, rules: Rules, *logical_axes: str | None) -> NamedSharding:
    """The NamedSharding of one array whose dimensions carry these logical names."""
    return NamedSharding(mesh, nn.logical_to_mesh_axes(logical_axes, rules))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Token batches (B, L): rows split over data x fsdp, sequence whole."""
    return NamedSharding(mesh, P(BATCH_AXES, None))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def validate(mesh: Mesh, *, global_batch_size: int, grad_accum_steps: int, num_heads: int,
             intermediate_size: int, hidden_size: int | None = None) -> None:
    """Raise ConfigError naming the values when the batch or model does not split evenly."""
    data, fsdp, tensor = (mesh.shape[a] for a in MESH_AXES)
    if grad_accum_steps < 1:
        raise ConfigError(f"grad_accum_steps={grad_accum_steps} must be >= 1")
    if global_batch_size % grad_accum_steps:
        raise ConfigError(f"batch_size={global_batch_size} is not divisible by "
                          f"grad_accum_steps={grad_accum_steps}")
    micro = global_batch_size // grad_accum_steps
    if micro % (data * fsdp):
        raise ConfigError(
            f"micro-batch of {micro} sequences (batch_size={global_batch_size} / "
            f"grad_accum_steps={grad_accum_steps}) is not divisible by data*fsdp="
            f"{data}*{fsdp}={data * fsdp}")
    if num_heads % tensor:
        raise ConfigError(f"num_attention_heads={num_heads} is not divisible by mesh.tensor={tensor}")
    if intermediate_size % tensor:
        raise ConfigError(f"intermediate_size={intermediate_size} is not divisible by "
                          f"mesh.tensor={tensor}")
    if hidden_size is not None:
        if hidden_size % fsdp:
            raise ConfigError(f"hidden_size={hidden_size} is not divisible by mesh.fsdp={fsdp}")
        if hidden_size % tensor:  # the MLM head's dense splits its output over 'mlp'
            raise ConfigError(f"hidden_size={hidden_size} is not divisible by "
                              f"mesh.tensor={tensor}")
