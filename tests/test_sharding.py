"""Mesh construction, rule presets, parameter shardings and divisibility checks."""

import jax
import pytest
from jax.sharding import PartitionSpec as P

from roberta_jax import sharding
from roberta_jax.config import RobertaConfig
from roberta_jax.errors import ConfigError
from roberta_jax.model import init_boxed, make_model

CFG = RobertaConfig(vocab_size=128, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                    intermediate_size=64, max_position_embeddings=40)


@pytest.mark.parametrize("sizes, shape", [((-1, 1, 1), (8, 1, 1)), ((2, -1, 2), (2, 2, 2)),
                                          ((1, 2, -1), (1, 2, 4)), ((2, 4, 1), (2, 4, 1))])
def test_make_mesh_fills_minus_one(sizes, shape):
    mesh = sharding.make_mesh(*sizes)
    assert mesh.axis_names == ("data", "fsdp", "tensor")
    assert tuple(mesh.shape[a] for a in mesh.axis_names) == shape
    assert all(t == jax.sharding.AxisType.Auto for t in mesh.axis_types)


@pytest.mark.parametrize("sizes, words", [((3, 1, 1), ["data=3", "8"]), ((-1, -1, 1), ["-1"]),
                                          ((3, -1, 1), ["not divisible by 3"]),
                                          ((0, 8, 1), ["data=0"])])
def test_make_mesh_errors_name_the_sizes(sizes, words):
    with pytest.raises(ConfigError) as e:
        sharding.make_mesh(*sizes)
    assert all(w in str(e.value) for w in words)


@pytest.mark.parametrize("sizes, preset", [((8, 1, 1), "dp"), ((1, 8, 1), "fsdp"),
                                           ((2, 1, 4), "tp"), ((2, 2, 2), "fsdp_tp")])
def test_preset_chosen_from_mesh(sizes, preset):
    assert sharding.rules_for(sharding.make_mesh(*sizes)) == sharding.RULE_PRESETS[preset]


def test_unknown_preset():
    with pytest.raises(ConfigError, match="'zero3'"):
        sharding.rules_for(sharding.make_mesh(8, 1, 1), "zero3")


def _specs(config, mesh, preset):
    model = make_model(config, "masked-lm")
    boxed = jax.eval_shape(lambda r: init_boxed(model, r), jax.random.key(0))
    shards = sharding.shardings_of(boxed, mesh, sharding.RULE_PRESETS[preset])
    return jax.tree_util.tree_map(lambda s: s.spec, shards)


@pytest.mark.parametrize("preset, expect", [
    ("dp", dict(q=P(None, None, None), o=P(None, None, None), ffn_in=P(None, None),
                ffn_out=P(None, None), ln=P(None), emb=P(None, None))),
    ("fsdp", dict(q=P("fsdp", None, None), o=P(None, None, "fsdp"), ffn_in=P("fsdp", None),
                  ffn_out=P(None, "fsdp"), ln=P("fsdp"), emb=P(None, "fsdp"))),
    ("tp", dict(q=P(None, "tensor", None), o=P("tensor", None, None), ffn_in=P(None, "tensor"),
                ffn_out=P("tensor", None), ln=P(None), emb=P(None, None))),
    ("fsdp_tp", dict(q=P("fsdp", "tensor", None), o=P("tensor", None, "fsdp"),
                     ffn_in=P("fsdp", "tensor"), ffn_out=P("tensor", "fsdp"), ln=P("fsdp"),
                     emb=P(None, "fsdp"))),
])
def test_parameter_specs_per_preset(preset, expect):
    specs = _specs(CFG, sharding.make_mesh(2, 2, 2), preset)
    layer = specs["roberta"]["encoder"]["layers_0"]
    got = dict(q=layer["attention"]["query"]["kernel"], o=layer["attention"]["output"]["kernel"],
               ffn_in=layer["intermediate"]["kernel"], ffn_out=layer["output"]["kernel"],
               ln=layer["output_norm"]["scale"],
               emb=specs["roberta"]["embeddings"]["word_embeddings"]["embedding"])
    assert got == expect
    # Megatron's q/k/v biases follow their heads.
    assert layer["attention"]["key"]["bias"] == (P("tensor", None) if "tp" in preset else P(None, None))


def test_scanned_layers_keep_the_layer_axis_whole():
    specs = _specs(CFG.replace(scan_layers=True), sharding.make_mesh(2, 2, 2), "fsdp_tp")
    stacked = specs["roberta"]["encoder"]["layers"]
    assert stacked["intermediate"]["kernel"] == P(None, "fsdp", "tensor")
    assert stacked["attention"]["query"]["kernel"] == P(None, "fsdp", "tensor", None)


def test_batch_sharding_and_logical_sharding():
    mesh = sharding.make_mesh(2, 2, 2)
    assert sharding.batch_sharding(mesh).spec == P(("data", "fsdp"), None)
    rules = sharding.RULE_PRESETS["tp"]
    assert sharding.logical_sharding(mesh, rules, "act_batch", "act_len", "act_mlp").spec == \
        P(("data", "fsdp"), None, "tensor")


def test_validate_accepts_and_rejects():
    mesh = sharding.make_mesh(2, 2, 2)
    ok = dict(global_batch_size=32, grad_accum_steps=4, num_heads=4, intermediate_size=64,
              hidden_size=32)
    sharding.validate(mesh, **ok)
    cases = [
        (dict(global_batch_size=30), ["batch_size=30", "grad_accum_steps=4"]),
        (dict(global_batch_size=30, grad_accum_steps=3), ["micro-batch of 10", "data*fsdp"]),
        (dict(global_batch_size=8), ["micro-batch of 2", "=4"]),
        (dict(num_heads=3), ["num_attention_heads=3", "mesh.tensor=2"]),
        (dict(intermediate_size=63), ["intermediate_size=63"]),
        (dict(hidden_size=31), ["hidden_size=31", "mesh.fsdp=2"]),
        (dict(grad_accum_steps=0), ["grad_accum_steps=0"]),
    ]
    for change, words in cases:
        with pytest.raises(ConfigError) as e:
            sharding.validate(mesh, **{**ok, **change})
        msg = str(e.value)
        assert "\n" not in msg and all(w in msg for w in words), msg
