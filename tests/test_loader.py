"""grain loader: per-epoch shuffle, process slices, exact resume, global arrays."""

import json
import os

import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from roberta_jax.data import load_prepared
from roberta_jax.data.loader import make_loader, to_global_array
from roberta_jax.data.prepared import FORMAT_VERSION
from roberta_jax.errors import DataError

L = 8


def _write_prepared(path, n_blocks: int) -> str:
    """A prepared dir whose block i holds i in every slot, so batches name their blocks."""
    os.makedirs(path)
    blocks = np.repeat(np.arange(n_blocks, dtype=np.uint16)[:, None], L, axis=1)
    np.save(os.path.join(path, "train.npy"), blocks)
    np.save(os.path.join(path, "validation.npy"), blocks[:3])
    with open(os.path.join(path, "metadata.json"), "w") as f:
        json.dump({"format_version": FORMAT_VERSION, "seq_len": L, "vocab_size": 1000}, f)
    return str(path)


@pytest.fixture(scope="module")
def data104(tmp_path_factory):
    return _write_prepared(tmp_path_factory.mktemp("d") / "p104", 104)


@pytest.fixture(scope="module")
def data103(tmp_path_factory):
    return _write_prepared(tmp_path_factory.mktemp("d") / "p103", 103)


def _ids(batch: np.ndarray) -> list[int]:
    assert batch.dtype == np.int32 and batch.shape[1] == L
    return batch[:, 0].tolist()


def test_load_prepared_random_access(data104):
    blocks = load_prepared(data104)
    assert len(blocks) == 104 and blocks[7].shape == (L,) and blocks[7][0] == 7
    assert len(load_prepared(data104, "validation")) == 3


def test_epochs_are_permutations_reshuffled_each_epoch(data104):
    it = iter(make_loader(data104, global_batch_size=8, seed=3))
    epochs = [sum((_ids(next(it)) for _ in range(13)), []) for _ in range(2)]
    for e in epochs:
        assert sorted(e) == list(range(104))
    assert epochs[0] != epochs[1] and epochs[0] != list(range(104))
    again = iter(make_loader(data104, global_batch_size=8, seed=3))
    assert _ids(next(again)) == epochs[0][:8]
    other = iter(make_loader(data104, global_batch_size=8, seed=4))
    assert _ids(next(other)) != epochs[0][:8]


def test_no_shuffle_is_stored_order(data104):
    it = iter(make_loader(data104, global_batch_size=8, shuffle=False))
    assert _ids(next(it)) == list(range(8))


def test_resume_from_saved_state_is_exact(data103):
    loader = make_loader(data103, global_batch_size=8, seed=0)
    it = iter(loader)
    reference = [_ids(next(it)) for _ in range(30)]  # crosses two epoch boundaries
    it = iter(loader)
    first = [_ids(next(it)) for _ in range(17)]
    state = json.loads(json.dumps(it.get_state()))  # as saved in a checkpoint
    del it
    resumed = iter(make_loader(data103, global_batch_size=8, seed=0))
    resumed.set_state(state)
    rest = [_ids(next(resumed)) for _ in range(13)]
    assert first + rest == reference


@pytest.mark.parametrize("n_blocks", [104, 103])
def test_two_processes_disjoint_union_is_epoch(data104, data103, n_blocks):
    path = data104 if n_blocks == 104 else data103
    per_proc = [sum((_ids(b) for b in make_loader(path, global_batch_size=8, seed=5,
                                                   num_epochs=1, process_index=p,
                                                   process_count=2)), [])
                for p in range(2)]
    a, b = map(set, per_proc)
    assert len(per_proc[0]) == len(per_proc[1])  # same number of steps on every host
    assert not a & b
    # 104 = 13 global batches exactly; of 103 the incomplete 13th global batch (7) is dropped.
    assert len(a | b) == 104 if n_blocks == 104 else len(a | b) == 96
    assert (a | b) <= set(range(n_blocks))
    # Step s of both processes, stacked in process order, is the single-process step s row
    # for row (the layout make_array_from_process_local_data expects; masks then match).
    single = [_ids(x) for x in make_loader(path, global_batch_size=8, seed=5, num_epochs=1)]
    assert len(single) == len(per_proc[0]) // 4
    for s, batch in enumerate(single):
        assert batch == per_proc[0][4 * s:4 * s + 4] + per_proc[1][4 * s:4 * s + 4]


def test_worker_processes_match_in_process(data104):
    ref = [_ids(b) for b in make_loader(data104, global_batch_size=8, seed=2, num_epochs=1)]
    it = iter(make_loader(data104, global_batch_size=8, seed=2, num_epochs=1, worker_count=1))
    got = [_ids(b) for b in it]
    it.close()
    assert got == ref


def test_bad_batch_sizes(data104):
    with pytest.raises(DataError, match="global_batch_size 9 .* process_count 2"):
        make_loader(data104, global_batch_size=9, process_index=0, process_count=2)
    with pytest.raises(DataError, match="has 3 blocks, fewer than one global batch of 8"):
        make_loader(data104, split="validation", global_batch_size=8)
    with pytest.raises(DataError, match="not a prepared data directory"):
        make_loader(os.path.dirname(data104), global_batch_size=8)


def test_to_global_array_shards_batch(data104):
    mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    sharding = NamedSharding(mesh, P("data", None))
    host = next(iter(make_loader(data104, global_batch_size=16, seed=1)))
    arr = to_global_array(host, sharding)
    assert arr.shape == (16, L) and arr.sharding == sharding
    np.testing.assert_array_equal(np.asarray(arr), host)
    tree = to_global_array({"tokens": host}, sharding)
    assert tree["tokens"].shape == (16, L)
