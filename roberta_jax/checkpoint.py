"""Orbax checkpoints of the training state plus the data iterator's position.

Layout (the converter reads it too): WORKDIR/checkpoints/<step>/ holds two items,
  state: the train state as a pytree dict {'step', 'params', 'opt_state', 'rng'} (sharded
         arrays, saved collectively by every process),
  meta:  JSON {'step', 'data': the grain iterator's get_state(), ...}.
Saves are asynchronous: the loop continues while the arrays are written; `wait()` blocks.
Restoring takes an abstract state (ShapeDtypeStructs carrying the *current* shardings), so a
checkpoint written on one mesh or device count restores onto any other.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from roberta_jax.errors import UserError


def checkpoint_dir(workdir: str) -> str:
    return os.path.join(os.path.abspath(workdir), "checkpoints")


class Checkpointer:
    """A CheckpointManager keeping the newest `keep` checkpoints of a workdir."""

    def __init__(self, workdir: str, *, keep: int, async_save: bool = True):
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True, enable_async_checkpointing=async_save)
        self.manager = ocp.CheckpointManager(checkpoint_dir(workdir), options=options)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def save(self, step: int, state: dict[str, Any], meta: dict[str, Any]) -> None:
        """Start writing checkpoint `step` (returns before the write finishes)."""
        if step in self.manager.all_steps():
            return
        args = ocp.args.Composite(state=ocp.args.StandardSave(state),
                                  meta=ocp.args.JsonSave({"step": int(step), **meta}))
        self.manager.save(step, args=args, force=True)

    def restore(self, step: int, abstract_state: dict[str, Any]) -> tuple[dict, dict]:
        """(state laid out as `abstract_state`'s shardings, meta dict) of checkpoint `step`."""
        args = ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state),
                                  meta=ocp.args.JsonRestore())
        restored = self.manager.restore(step, args=args)
        return restored["state"], restored["meta"]

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def latest_step(workdir: str) -> int | None:
    """The newest complete checkpoint step of a workdir, or None."""
    directory = checkpoint_dir(workdir)
    if not os.path.isdir(directory):
        return None
    steps = ocp.utils.checkpoint_steps(directory)
    return max(steps) if steps else None


def load_state(workdir: str, step: int | None = None) -> tuple[dict, int]:
    """(state pytree of numpy arrays on the host, step): for conversion and inspection,
    whatever mesh wrote it. step None means the latest."""
    step = latest_step(workdir) if step is None else step
    if step is None:
        raise UserError(f"{workdir!r} has no checkpoints (looked in {checkpoint_dir(workdir)})")
    path = os.path.join(checkpoint_dir(workdir), str(step), "state")
    if not os.path.isdir(path):
        raise UserError(f"{workdir!r} has no checkpoint for step {step}; it has "
                        f"{ocp.utils.checkpoint_steps(checkpoint_dir(workdir))}")
    checkpointer = ocp.StandardCheckpointer()
    metadata = checkpointer.metadata(path).item_metadata
    device = jax.local_devices(backend="cpu")[0]
    sharding = jax.sharding.SingleDeviceSharding(device)
    target = jax.tree.map(
        lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=sharding), metadata)
    state = checkpointer.restore(path, target)
    return jax.tree.map(np.asarray, state), step
