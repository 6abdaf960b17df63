"""roberta_jax model directories (orbax params restored onto any mesh) and pretraining
workdirs (params only, read on the host)."""

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
import transformers
from jax.sharding import NamedSharding, PartitionSpec as P

import roberta_jax as rj
from roberta_jax import cli
from roberta_jax.convert import convert, detect_format
from roberta_jax.convert.jax_dir import load_jax_dir
from roberta_jax.convert import load_workdir_params  # the name docs/converting.md gives
from roberta_jax.errors import ConversionError
from roberta_jax.model import init_params

CFG = rj.RobertaConfig(vocab_size=96, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                       intermediate_size=64, max_position_embeddings=40)
RULES = (("vocab", "model"), ("embed", None), ("mlp", "model"), ("heads", "model"), ("kv", None),
         ("layers", None))
IDS = np.array([[0, 5, 6, 7, 2, 1], [0, 8, 9, 10, 11, 2]])


def mesh_2x4():
    return jax.make_mesh((2, 4), ("data", "model"), axis_types=(jax.sharding.AxisType.Auto,) * 2)


def leaves(tree):
    return jax.tree_util.tree_leaves_with_path(tree)


def assert_trees_equal(a, b):
    la, lb = leaves(a), leaves(b)
    assert [k for k, _ in la] == [k for k, _ in lb]
    for (k, x), (_, y) in zip(la, lb):
        assert x.dtype == y.dtype and np.array_equal(np.asarray(x), np.asarray(y)), k


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    path = tmp_path_factory.mktemp("jaxdir") / "mlm"
    model = rj.make_model(CFG, "masked-lm")
    params = init_params(model, jax.random.key(1))
    rj.save_pretrained(path, params, CFG, format="jax")
    return str(path), params


def test_layout_and_host_restore(saved):
    path, params = saved
    assert detect_format(path) == "jax"
    raw = json.load(open(f"{path}/config.json"))
    assert raw["architectures"] == ["RobertaForMaskedLM"] and raw["model_type"] == "roberta"
    restored, cfg, task = load_jax_dir(path)
    # config.json always writes id2label, so default names come back explicit.
    assert task == "masked-lm" and cfg.replace(id2label_names=None) == CFG
    assert all(isinstance(x, np.ndarray) for x in jax.tree_util.tree_leaves(restored))
    assert_trees_equal(restored, params)


def test_restore_onto_a_mesh_it_was_not_saved_from(saved):
    path, params = saved
    mesh = mesh_2x4()
    model, sharded = rj.from_pretrained(path, mesh=mesh, rules=RULES)
    emb = sharded["roberta"]["embeddings"]["word_embeddings"]["embedding"]
    assert emb.sharding.spec == P("model", None)
    assert emb.addressable_shards[0].data.shape == (96 // 4, 32)
    q = sharded["roberta"]["encoder"]["layers_0"]["attention"]["query"]["kernel"]
    assert q.sharding.spec == P(None, "model", None)
    assert_trees_equal(sharded, params)
    # A plain pytree of shardings works too (here: everything split over 'data' rows).
    rows = NamedSharding(mesh, P("data"))
    target = jax.tree.map(lambda x: rows if x.shape[0] % 2 == 0 else NamedSharding(mesh, P()), params)
    restored, _, _ = load_jax_dir(path, shardings=target)
    assert restored["lm_head_bias"].sharding == rows
    assert_trees_equal(restored, params)
    with jax.set_mesh(mesh):
        out = jax.jit(lambda p, x: model.apply({"params": p}, x))(sharded, IDS)
    ref = model.apply({"params": params}, IDS)
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref), rtol=1e-5, atol=1e-5)


def test_compute_dtype_and_param_dtype(saved):
    path, _ = saved
    model, params = rj.from_pretrained(path, dtype=jnp.bfloat16)
    assert model.dtype == jnp.bfloat16 and params["lm_head_bias"].dtype == jnp.float32
    assert model.apply({"params": params}, IDS).dtype == jnp.bfloat16
    _, params16 = rj.from_pretrained(path, param_dtype=jnp.bfloat16)
    assert {x.dtype for x in jax.tree_util.tree_leaves(params16)} == {jnp.dtype(jnp.bfloat16)}


def test_scanned_layers_export_like_unrolled(tmp_path, saved):
    path, params = saved
    scan_cfg = CFG.replace(scan_layers=True)
    stacked = init_params(rj.make_model(scan_cfg, "masked-lm"), jax.random.key(1))
    assert stacked["roberta"]["encoder"]["layers"]["intermediate"]["kernel"].shape == (2, 32, 64)
    rj.save_pretrained(tmp_path / "scan", stacked, scan_cfg, format="jax")
    convert(tmp_path / "scan", tmp_path / "hf", to="hf")
    hf, info = transformers.AutoModelForMaskedLM.from_pretrained(tmp_path / "hf", output_loading_info=True)
    assert not (info["missing_keys"] or info["unexpected_keys"] or info["mismatched_keys"])
    layer1 = jax.tree.map(lambda x: x[1], stacked["roberta"]["encoder"]["layers"])
    np.testing.assert_array_equal(
        hf.roberta.encoder.layer[1].intermediate.dense.weight.detach().numpy(),
        np.asarray(layer1["intermediate"]["kernel"]).T)


def test_jax_dir_loaded_for_another_task(saved, capsys):
    path, _ = saved
    _, base = rj.from_pretrained(path, task="base")
    assert set(base) == {"roberta"}
    with pytest.raises(ConversionError, match="allow-new-head"):
        rj.from_pretrained(path, task="token-classification")


# ------------------------------------------------------------------------------ workdirs
def _fake_workdir(root, steps=(100, 200)):
    """A workdir laid out as the trainer writes it, with sharded state on a 2x4 mesh."""
    mesh = mesh_2x4()
    abstract = jax.eval_shape(lambda: rj.model.init_boxed(rj.make_model(CFG), jax.random.key(0)))
    shardings = nn.logical_to_mesh_sharding(nn.get_partition_spec(abstract), mesh, RULES)
    manager = ocp.CheckpointManager(root / "checkpoints")
    saved = {}
    for step in steps:
        params = jax.device_put(init_params(rj.make_model(CFG), jax.random.key(step)), shardings)
        state = {"params": params, "opt_state": {"mu": jax.tree.map(jnp.zeros_like, params)},
                 "step": jnp.asarray(step)}
        manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                   meta=ocp.args.JsonSave({"step": step})))
        saved[step] = jax.tree.map(np.asarray, params)
    manager.wait_until_finished()
    manager.close()
    config = {"seed": 0, "model": {"preset": "tiny", **{k: getattr(CFG, k) for k in (
        "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
        "intermediate_size", "max_position_embeddings")}}}
    (root / "config.json").write_text(json.dumps(config))
    return saved


def test_workdir_params_latest_and_by_step(tmp_path, capsys):
    saved = _fake_workdir(tmp_path)
    params, cfg = load_workdir_params(tmp_path)
    assert cfg.hidden_size == 32 and cfg.vocab_size == 96
    assert all(isinstance(x, np.ndarray) for x in jax.tree_util.tree_leaves(params))
    assert_trees_equal(params, saved[200])
    params100, _ = load_workdir_params(tmp_path, step=100)
    assert_trees_equal(params100, saved[100])
    with pytest.raises(ConversionError, match=r"no checkpoint for step 7.*\[100, 200\]"):
        load_workdir_params(tmp_path, step=7)
    capsys.readouterr()
    assert cli.main(["convert", str(tmp_path), str(tmp_path / "hf"), "--to", "hf", "--step", "100"]) == 0
    assert "step 100" in capsys.readouterr().out
    _, info = transformers.AutoModelForMaskedLM.from_pretrained(tmp_path / "hf", output_loading_info=True)
    assert not (info["missing_keys"] or info["unexpected_keys"] or info["mismatched_keys"])
    _, exported = rj.from_pretrained(tmp_path / "hf")
    assert_trees_equal(exported, saved[100])


def test_workdir_errors(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    with pytest.raises(ConversionError, match="no config.json"):
        load_workdir_params(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model": {"hidden_sise": 3}}))
    with pytest.raises(ConversionError, match="hidden_sise"):
        load_workdir_params(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model": "tiny"}))
    with pytest.raises(ConversionError, match="no checkpoints"):
        load_workdir_params(tmp_path)
