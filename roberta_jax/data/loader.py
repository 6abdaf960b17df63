"""Multi-host grain loader over prepared blocks, with checkpointable iterator state.

Pipeline (grain `MapDataset`): blocks -> global shuffle (seeded, a new permutation every
epoch) -> repeat -> this process's slice (every process_count-th element of the global order,
taken as its contiguous rows of each global batch) -> batch of global_batch_size // process_count -> int32 ->
background prefetch (threads, optionally worker processes).

Global step s consists of process p's s-th batch for every p; together they are the
global_batch_size consecutive elements s*G .. (s+1)*G-1 of the shuffled stream, process p
holding rows p*b .. (p+1)*b-1 (b = G / process_count), which is the layout
`jax.make_array_from_process_local_data` expects. So the processes' blocks are disjoint, an
epoch is covered once, and the global batch is the same array, row for row, whatever the
number of processes (so are its dynamic masks). With a finite num_epochs the last global batch is
dropped if incomplete (fewer than global_batch_size blocks left).

`iter(loader).get_state()` is a small JSON-serialisable dict; `set_state(state)` on a fresh
iterator resumes exactly where the saved one was.
"""

from __future__ import annotations

import os
from typing import Any

import grain
import jax
import numpy as np

from roberta_jax.data.prepared import SPLITS, read_metadata
from roberta_jax.errors import DataError


class _ProcessRows(grain.MapDataset):
    """Process `index`'s rows of every global batch: element i is global element
    (i // b) * G + index * b + i % b. Lazy: other processes' rows are never read."""

    def __init__(self, parent: grain.MapDataset, global_batch: int, index: int, count: int):
        super().__init__(parent)
        self._global, self._local, self._index = global_batch, global_batch // count, index
        self._len = len(parent) // global_batch * self._local

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self.slice(index)
        step, row = divmod(index, self._local)
        return self._parent[step * self._global + self._index * self._local + row]

    def __str__(self) -> str:
        return f"ProcessRows(process={self._index}, rows={self._local}/{self._global})"


class BlockSource:
    """Random-access grain source over `{split}.npy`; re-opens the memory map after pickling
    so worker processes do not copy the array."""

    def __init__(self, path: str):
        self._path = path
        self._blocks = np.load(path, mmap_mode="r")

    def __len__(self) -> int:
        return len(self._blocks)

    def __getitem__(self, index: int) -> np.ndarray:
        return np.asarray(self._blocks[index])

    def __getstate__(self) -> dict:
        return {"path": self._path}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["path"])

    def __repr__(self) -> str:
        return f"BlockSource({self._path!r}, blocks={len(self)})"


def make_loader(prepared_dir: str, *, split: str = "train", global_batch_size: int,
                seed: int = 0, shuffle: bool = True, num_epochs: int | None = None,
                process_index: int | None = None, process_count: int | None = None,
                worker_count: int = 0, prefetch: int = 2) -> grain.IterDataset:
    """An iterable of host batches, int32 (global_batch_size // process_count, seq_len).

    process_index/process_count default to JAX's; pass them to simulate hosts in tests.
    num_epochs None repeats forever. prefetch: batches prepared ahead by as many background
    threads; worker_count > 0 additionally reads in that many worker processes.
    """
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; expected one of {SPLITS}")
    read_metadata(prepared_dir)  # a clear error if this is not a prepared directory
    pi = jax.process_index() if process_index is None else process_index
    pc = jax.process_count() if process_count is None else process_count
    if not 0 <= pi < pc:
        raise DataError(f"process_index {pi} is not in [0, process_count={pc})")
    if global_batch_size <= 0 or global_batch_size % pc:
        raise DataError(f"global_batch_size {global_batch_size} is not a positive multiple of "
                        f"process_count {pc}")
    source = BlockSource(os.path.join(prepared_dir, f"{split}.npy"))
    if len(source) < global_batch_size:
        raise DataError(f"split {split!r} of {prepared_dir!r} has {len(source)} blocks, fewer "
                        f"than one global batch of {global_batch_size}")

    ds = grain.MapDataset.source(source)
    if shuffle:
        ds = ds.shuffle(seed=seed)
    ds = ds.repeat(num_epochs)  # reseeds the shuffle every epoch
    if num_epochs is not None:
        # Keep only whole global batches so every process yields the same number of batches.
        ds = ds[: len(ds) // global_batch_size * global_batch_size]
    ds = _ProcessRows(ds, global_batch_size, pi, pc)
    ds = ds.batch(global_batch_size // pc, drop_remainder=True)
    ds = ds.map(lambda b: b.astype(np.int32))
    it_ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=prefetch,
                                                 prefetch_buffer_size=prefetch))
    if worker_count > 0:
        from absl import flags

        # grain's worker processes read absl flags; outside an absl app nothing parsed them.
        if not flags.FLAGS.is_parsed():
            flags.FLAGS.mark_as_parsed()
        it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count))
    return it_ds


def to_global_array(host_batch: Any, sharding: jax.sharding.Sharding) -> Any:
    """This process's rows (a numpy array or pytree of them) -> global jax.Array(s) laid out
    by `sharding` (whose batch axis spans all processes)."""
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x),
                        host_batch)
