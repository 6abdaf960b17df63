"""roberta_jax model directories: config.json (HF-compatible) + an orbax checkpoint of params
under params/ + tokenizer files when known.

Restoring reads the checkpoint's own metadata, so it lands on any device mesh (pass target
shardings) or, without shardings, as numpy arrays on the host.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import jax
import numpy as np

from roberta_jax.config import RobertaConfig
from roberta_jax.convert import hf, mapping
from roberta_jax.convert.hf import _first_line
from roberta_jax.errors import ConversionError

PARAMS_DIR = "params"


def is_jax_dir(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "config.json")) and \
        os.path.isdir(os.path.join(path, PARAMS_DIR))


def task_of_params(params: Mapping) -> str:
    """The task whose head `params` carry (our names)."""
    if "lm_head_bias" in params:
        return "masked-lm"
    if "classifier_dense" in params:
        return "sequence-classification"
    if "qa_outputs" in params:
        return "question-answering"
    if "classifier" in params:
        kernel = params["classifier"]["kernel"]
        pooled = "pooler" in params.get("roberta", {})
        return "multiple-choice" if pooled and kernel.shape[-1] == 1 else "token-classification"
    return "base"


def save_jax_dir(out_dir: str, params, config: RobertaConfig, task: str, *,
                 tokenizer_dir: str | None = None, extra_config: dict | None = None) -> list[str]:
    """Write config.json + orbax params (+ tokenizer files). `params` may be numpy arrays or
    (sharded, even multi-host) jax.Arrays; orbax writes each shard from its owner."""
    import orbax.checkpoint as ocp

    os.makedirs(out_dir, exist_ok=True)
    if jax.process_index() == 0:
        hf.remove_config(out_dir)  # config.json marks a complete directory: it is written last
    params = _numpy_leaves_to_jax(params)
    # orbax writes to a temporary directory and renames it when complete (atomic).
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(os.path.abspath(os.path.join(out_dir, PARAMS_DIR)), params, force=True)
        checkpointer.wait_until_finished()
    files = [PARAMS_DIR]
    if jax.process_index() == 0:
        dtypes = {str(x.dtype) for x in jax.tree_util.tree_leaves(params)}
        files += hf.copy_tokenizer(tokenizer_dir, out_dir)
        files.append(hf.write_config(out_dir, config, task, extra=extra_config,
                                     dtype=dtypes.pop() if len(dtypes) == 1 else None))
    return files


def _numpy_leaves_to_jax(tree):
    """Host numpy leaves -> jax arrays, one at a time, in the (dict) tree itself: orbax snapshots
    numpy arrays with a full extra copy before writing, jax arrays without, and replacing leaf
    by leaf lets each numpy buffer go as soon as its jax copy exists."""
    if not isinstance(tree, dict):
        return jax.device_put(tree) if isinstance(tree, np.ndarray) else tree
    for k in list(tree):
        tree[k] = _numpy_leaves_to_jax(tree[k])
    return tree


def read_config(path: str) -> tuple[RobertaConfig, str, dict]:
    """(config, task, raw config.json) of a roberta_jax model directory."""
    config, raw = hf.read_config(path)
    task = hf.task_of_architectures(raw.get("architectures"))
    if task is None:
        raise ConversionError(f"{path}/config.json names no architecture, so its task is unknown")
    return config, task, raw


def load_jax_dir(path: str, *, shardings=None, dtype=None):
    """(params, config, task) from a roberta_jax model directory.

    shardings: None -> numpy arrays on the host; a jax.sharding.Sharding -> every array with
    it; or a pytree of Shardings matching params -> each array restored directly into its
    shards (any mesh, not only the one it was saved from). dtype: cast on restore.
    """
    import orbax.checkpoint as ocp

    config, task, _ = read_config(path)
    ckpt = os.path.abspath(os.path.join(path, PARAMS_DIR))
    # Closed on every path: an open checkpointer's threads spew tracebacks at exit.
    with ocp.StandardCheckpointer() as checkpointer:
        params = _restore(checkpointer, ckpt, shardings, dtype)
    _check_layout(params, config, task, path)
    return params, config, task


def _restore(checkpointer, ckpt: str, shardings, dtype):
    import orbax.checkpoint as ocp

    try:
        tree = checkpointer.metadata(ckpt).item_metadata.tree
    except Exception as e:  # orbax says little that is uniform about a damaged directory
        raise ConversionError(f"{ckpt} is not a readable orbax checkpoint: "
                              f"{type(e).__name__}: {_first_line(e)}") from None
    if shardings is None or isinstance(shardings, jax.sharding.Sharding):
        shardings = jax.tree.map(lambda _: shardings, tree)
    try:
        target = jax.tree.map(
            lambda m, s: jax.ShapeDtypeStruct(m.shape, dtype or m.dtype, sharding=s), tree, shardings)
    except ValueError as e:
        raise ConversionError(f"the shardings given do not match the params in {ckpt}: {e}") from None
    try:
        if all(s is None for s in jax.tree_util.tree_leaves(shardings, is_leaf=lambda x: x is None)):
            # No shardings: restore as numpy on the host (never needs the saving mesh).
            restore_args = jax.tree.map(
                lambda m: ocp.RestoreArgs(restore_type=np.ndarray, dtype=dtype), tree)
            with ocp.PyTreeCheckpointer() as host:
                return host.restore(
                    ckpt, args=ocp.args.PyTreeRestore(item=target, restore_args=restore_args))
        return checkpointer.restore(ckpt, target)
    except (ValueError, OSError, KeyError) as e:  # tensorstore reports damaged data as these
        raise ConversionError(f"cannot restore the params in {ckpt}: {_first_line(e)}") from None


def _check_layout(params, config: RobertaConfig, task: str, path: str) -> None:
    """The params must be what the config and architecture say (checked by converting the
    shapes, without data, through the strict mapping)."""
    shapes = jax.tree.map(lambda x: np.broadcast_to(np.zeros((), np.int8), x.shape), params)
    try:
        mapping.params_to_hf(shapes, config, task)
    except ConversionError as e:
        raise ConversionError(f"{path}: params do not match its config.json: {e}") from None
