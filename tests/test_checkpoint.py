"""Orbax checkpoints: state + JSON meta round trip, restore onto another mesh, retention,
and the host-side reader."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

from roberta_jax.checkpoint import Checkpointer, latest_step, load_state
from roberta_jax.errors import UserError


def _mesh(shape, names):
    return jax.make_mesh(shape, names, axis_types=(AxisType.Auto,) * len(shape))


def _state(mesh, step):
    w = jax.device_put(jnp.arange(64.0).reshape(16, 4) * step, NamedSharding(mesh, P("data")))
    params = {"w": w, "b": jnp.full((4,), float(step))}
    return {"step": jnp.int32(step), "params": params, "opt_state": optax.adam(1e-3).init(params),
            "rng": jax.random.key_data(jax.random.key(step))}


def test_round_trip_onto_another_mesh_and_retention(tmp_path):
    mesh8 = _mesh((8,), ("data",))
    ckpt = Checkpointer(str(tmp_path), keep=2)
    for step in (1, 2, 3):
        ckpt.save(step, _state(mesh8, step), {"data": {"next_index": 10 * step}})
    ckpt.wait()
    assert ckpt.all_steps() == [2, 3] and latest_step(str(tmp_path)) == 3

    mesh = _mesh((2, 4), ("a", "b"))
    target = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=NamedSharding(
            mesh, P("b", "a") if x.shape == (16, 4) else P())), _state(mesh8, 0))
    state, meta = ckpt.restore(3, target)
    ckpt.close()
    assert meta == {"step": 3, "data": {"next_index": 30}}
    w = state["params"]["w"]
    assert w.sharding.spec == P("b", "a") and w.sharding.mesh.shape == mesh.shape
    np.testing.assert_array_equal(np.asarray(w), np.arange(64.0).reshape(16, 4) * 3)
    expected = _state(mesh8, 3)
    for got, want in zip(jax.tree.leaves(state), jax.tree.leaves(expected)):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    assert type(state["opt_state"]) is type(expected["opt_state"])


def test_load_state_reads_host_arrays(tmp_path):
    ckpt = Checkpointer(str(tmp_path), keep=1, async_save=False)
    ckpt.save(5, _state(_mesh((8,), ("data",)), 5), {"data": {}})
    ckpt.close()
    state, step = load_state(str(tmp_path))
    assert step == 5 and isinstance(state["params"]["w"], np.ndarray)
    np.testing.assert_array_equal(state["params"]["w"], np.arange(64.0).reshape(16, 4) * 5)


def test_missing_checkpoints_are_a_user_error(tmp_path):
    assert latest_step(str(tmp_path)) is None
    with pytest.raises(UserError, match="has no checkpoints"):
        load_state(str(tmp_path))
