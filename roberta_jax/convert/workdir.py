"""Export the params of a pretraining workdir.

Layout agreed with the trainer: WORKDIR/checkpoints/<step>/ is an orbax CheckpointManager step
with a Composite of items "state" (StandardSave of a pytree holding at least {'params': ...})
and "meta" (JsonSave); WORKDIR/config.json is the resolved ml_collections config as JSON whose
`model` entry is a preset name or a dict of RobertaConfig fields (optionally with `preset`).

Only 'params' is read, restored as numpy on the host from the checkpoint's own metadata, so
neither the training mesh nor the optimizer state's memory is ever needed.
"""

from __future__ import annotations

import os

import jax
import numpy as np

from roberta_jax.config import RobertaConfig
from roberta_jax.convert import hf
from roberta_jax.convert.hf import _first_line
from roberta_jax.errors import ConfigError, ConversionError
from roberta_jax.experiment import model_config_from_spec

CHECKPOINTS = "checkpoints"


def is_workdir(path: str) -> bool:
    return os.path.isdir(os.path.join(path, CHECKPOINTS))


def workdir_config(workdir: str) -> RobertaConfig:
    """The model config recorded in WORKDIR/config.json."""
    file = os.path.join(workdir, "config.json")
    raw = hf.read_json(file, missing=f"workdir {workdir!r} has no config.json (the resolved config)")
    model = raw.get("model") if isinstance(raw, dict) else None
    if model is None:
        raise ConversionError(f"{file} has no 'model' entry")
    try:
        return model_config_from_spec(model)
    except ConfigError as e:
        raise ConversionError(f"{file}: {e}") from None


def load_workdir_params(workdir: str, step: int | None = None, dtype=None) -> tuple[dict, RobertaConfig]:
    """(params as host numpy arrays, RobertaConfig) of the latest (or `step`) checkpoint."""
    import orbax.checkpoint as ocp

    config = workdir_config(workdir)
    directory = os.path.abspath(os.path.join(workdir, CHECKPOINTS))
    manager = ocp.CheckpointManager(
        directory, item_handlers={"state": ocp.PyTreeCheckpointHandler(),
                                  "meta": ocp.JsonCheckpointHandler()},
        options=ocp.CheckpointManagerOptions(read_only=True))
    try:
        steps = list(manager.all_steps())
        if not steps:
            raise ConversionError(f"workdir {workdir!r} has no checkpoints in {directory}")
        if step is None:
            step = manager.latest_step()
        elif step not in steps:
            raise ConversionError(f"workdir {workdir!r} has no checkpoint for step {step}; "
                                  f"it has steps {sorted(steps)}")
        tree = manager.item_metadata(step)["state"]
        tree = getattr(tree, "tree", tree)
        if not isinstance(tree, dict) or "params" not in tree:
            raise ConversionError(f"checkpoint step {step} in {directory} has no 'state' item with "
                                  f"'params' (found {sorted(tree) if isinstance(tree, dict) else tree})")
        target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, dtype or m.dtype), tree["params"])
        restore_args = jax.tree.map(lambda m: ocp.RestoreArgs(restore_type=np.ndarray, dtype=dtype),
                                    tree["params"])
        # partial_restore: read 'params' only; optimizer state and step stay on disk.
        try:
            restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
                item={"params": target}, restore_args={"params": restore_args},
                partial_restore=True)))
        except (ValueError, OSError, KeyError) as e:  # tensorstore's word for damaged data
            raise ConversionError(f"cannot restore the params of step {step} in {directory}: "
                                  f"{_first_line(e)}") from None
    finally:
        manager.close()
    print(f"workdir {workdir}: read params of step {step}")
    return restored["state"]["params"], config
