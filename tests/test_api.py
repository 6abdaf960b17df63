"""The public API surface: lazy exports, from_pretrained/save_pretrained options."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

import roberta_jax as rj
from roberta_jax.errors import ConversionError
from roberta_jax.model import init_params

CFG = rj.RobertaConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                       intermediate_size=64, max_position_embeddings=24, num_labels=3,
                       id2label_names=("neg", "neu", "pos"))


def test_import_is_light_and_exports_the_api():
    code = """
import json, sys
import roberta_jax as rj
heavy_on_import = [m for m in ("torch", "transformers", "flax") if m in sys.modules]
api = [rj.RobertaConfig, rj.from_pretrained, rj.save_pretrained, rj.make_model,
       rj.masking.mask_tokens, rj.data.load_prepared]
print(json.dumps({"heavy": heavy_on_import, "torch": "torch" in sys.modules, "tasks": rj.tasks}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "JAX_PLATFORMS": "cpu"}).stdout
    got = json.loads(out.strip().splitlines()[-1])
    assert got["heavy"] == [] and got["torch"] is False, got
    assert got["tasks"] == ["base", "masked-lm", "sequence-classification", "token-classification",
                            "question-answering", "multiple-choice"]


@pytest.fixture(scope="module")
def cls_params():
    return init_params(rj.make_model(CFG, "sequence-classification"), jax.random.key(0))


def test_save_hf_infers_task_keeps_labels_and_saves_tokenizer(tmp_path, cls_params):
    class Tok:  # anything with save_pretrained, like an HF tokenizer
        def save_pretrained(self, out):
            path = os.path.join(out, "tokenizer.json")
            open(path, "w").write("{}")
            return (path,)

    files = rj.save_pretrained(tmp_path / "hf", cls_params, CFG, tokenizer=Tok())
    assert any(f.endswith("tokenizer.json") for f in files)
    raw = json.load(open(tmp_path / "hf" / "config.json"))
    assert raw["architectures"] == ["RobertaForSequenceClassification"]
    assert raw["id2label"] == {"0": "neg", "1": "neu", "2": "pos"} and raw["label2id"]["pos"] == 2
    model, params = rj.from_pretrained(tmp_path / "hf")  # task taken from the checkpoint
    assert model.config.id2label_names == ("neg", "neu", "pos")
    ids = np.array([[0, 4, 5, 2]])
    np.testing.assert_array_equal(np.asarray(model.apply({"params": params}, ids)),
                                  np.asarray(model.apply({"params": cls_params}, ids)))
    # A tokenizer directory is copied from.
    rj.save_pretrained(tmp_path / "jax", params, CFG, format="jax", tokenizer=str(tmp_path / "hf"))
    assert (tmp_path / "jax" / "tokenizer.json").read_text() == "{}"


def test_save_errors(tmp_path, cls_params):
    with pytest.raises(ConversionError, match="unknown output format 'onnx'"):
        rj.save_pretrained(tmp_path / "x", cls_params, CFG, format="onnx")
    with pytest.raises(ConversionError, match="params do not match task 'masked-lm'"):
        rj.save_pretrained(tmp_path / "y", cls_params, CFG, task="masked-lm")


def test_single_sharding_places_every_param(tmp_path, cls_params):
    rj.save_pretrained(tmp_path / "hf", cls_params, CFG)
    mesh = jax.make_mesh((8,), ("d",), axis_types=(jax.sharding.AxisType.Auto,))
    replicated = NamedSharding(mesh, P())
    _, params = rj.from_pretrained(tmp_path / "hf", shardings=replicated)
    assert {x.sharding for x in jax.tree_util.tree_leaves(params)} == {replicated}
    with pytest.raises(ConversionError, match="dtype 'int8'"):
        rj.from_pretrained(tmp_path / "hf", param_dtype="int8")
