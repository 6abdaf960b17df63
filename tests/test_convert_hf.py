"""HF directories <-> roberta_jax: formats (safetensors, .bin, sharded), dtypes, round trips,
strictness, safety and the convert CLI. Model numerics are tests/test_model.py's job."""

import json
import os
import shutil

import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import load_file

import roberta_jax as rj
from roberta_jax import cli
from roberta_jax.convert import convert, detect_format, hf
from roberta_jax.errors import ConversionError

HF_CLASSES = {
    "base": transformers.RobertaModel,
    "masked-lm": transformers.RobertaForMaskedLM,
    "sequence-classification": transformers.RobertaForSequenceClassification,
    "token-classification": transformers.RobertaForTokenClassification,
    "question-answering": transformers.RobertaForQuestionAnswering,
    "multiple-choice": transformers.RobertaForMultipleChoice,
}
TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
IDS = np.array([[0, 5, 6, 7, 8, 9, 2, 1], [0, 11, 12, 2, 1, 1, 1, 1]])


def hf_config(**kw):
    return transformers.RobertaConfig(
        vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=40, layer_norm_eps=1e-5, type_vocab_size=1,
        **{"num_labels": 3, **kw})


def save_hf(path, task="masked-lm", dtype="float32", seed=0, **kw):
    torch.manual_seed(seed)
    if task == "question-answering":
        kw["num_labels"] = 2
    model = HF_CLASSES[task](hf_config(**kw)).eval()
    with torch.no_grad():  # HF zero-inits biases; random ones make the round trip meaningful
        for p in model.parameters():
            p.normal_(0, 0.5)
    model.to(TORCH_DTYPES[dtype]).save_pretrained(path)
    return model


def tensors(path):
    files = [f for f in os.listdir(path) if f.endswith(".safetensors")]
    out = {}
    for f in files:
        out.update(load_file(os.path.join(path, f)))
    return out


def assert_same_tensors(a, b):
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k].dtype == b[k].dtype, k
        assert a[k].shape == b[k].shape, k
        np.testing.assert_array_equal(a[k].view(np.uint8), b[k].view(np.uint8), err_msg=k)


def torch_out(model, ids, task):
    ids_t = torch.tensor(ids)
    with torch.no_grad():
        out = model(ids_t, attention_mask=ids_t != 1)
    if task == "question-answering":
        return np.stack([out.start_logits.numpy(), out.end_logits.numpy()])
    return (out.last_hidden_state if task == "base" else out.logits).float().numpy()


def jax_out(model, params, ids, task):
    out = model.apply({"params": params}, ids, attention_mask=ids != 1)
    return np.stack([np.asarray(o) for o in out]) if task == "question-answering" else np.asarray(out)


def inputs_for(task):
    return np.stack([IDS, IDS[::-1]], axis=1) if task == "multiple-choice" else IDS


@pytest.fixture(scope="module")
def mlm_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("hf") / "mlm"
    model = save_hf(path)
    return str(path), model


# ------------------------------------------------------------------------------ round trips
@pytest.mark.parametrize("task", list(HF_CLASSES))
def test_every_task_round_trips_bit_exact_and_loads_in_transformers(tmp_path, task):
    src = tmp_path / "src"
    ref_model = save_hf(src, task)
    convert(src, tmp_path / "jax", to="jax")
    convert(tmp_path / "jax", tmp_path / "hf", to="hf")
    assert_same_tensors(tensors(src), tensors(tmp_path / "hf"))
    auto = HF_CLASSES[task]
    back, info = auto.from_pretrained(tmp_path / "hf", output_loading_info=True)
    assert not (info["missing_keys"] or info["unexpected_keys"] or info["mismatched_keys"]), info
    ids = inputs_for(task)
    expected = torch_out(ref_model, ids, task)
    np.testing.assert_array_equal(torch_out(back.eval(), ids, task), expected)
    model, params = rj.from_pretrained(tmp_path / "jax", task=task)
    ours = jax_out(model, params, ids, task)
    scale = np.abs(expected).max()
    assert np.abs(ours - expected).max() <= 1e-5 * scale, np.abs(ours - expected).max() / scale


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_round_trips_keep_dtype(tmp_path, dtype):
    save_hf(tmp_path / "src", dtype=dtype)
    convert(tmp_path / "src", tmp_path / "jax", to="jax")
    convert(tmp_path / "jax", tmp_path / "hf", to="hf")
    a = tensors(tmp_path / "src")
    assert {str(x.dtype) for x in a.values()} == {dtype}
    assert_same_tensors(a, tensors(tmp_path / "hf"))
    _, params = rj.from_pretrained(tmp_path / "hf")
    assert str(params["roberta"]["embeddings"]["word_embeddings"]["embedding"].dtype) == dtype


def test_jax_to_hf_to_jax_is_bit_exact(tmp_path, mlm_dir):
    convert(mlm_dir[0], tmp_path / "jax1", to="jax")
    convert(tmp_path / "jax1", tmp_path / "hf", to="hf")
    convert(tmp_path / "hf", tmp_path / "jax2", to="jax")
    _, p1 = rj.from_pretrained(tmp_path / "jax1")
    _, p2 = rj.from_pretrained(tmp_path / "jax2")
    import jax
    flat1, flat2 = jax.tree_util.tree_leaves_with_path(p1), jax.tree_util.tree_leaves_with_path(p2)
    assert [k for k, _ in flat1] == [k for k, _ in flat2]
    for (k, a), (_, b) in zip(flat1, flat2):
        assert a.dtype == b.dtype and np.array_equal(np.asarray(a), np.asarray(b)), k


def test_dtype_option_casts(tmp_path, mlm_dir):
    convert(mlm_dir[0], tmp_path / "bf16", to="hf", dtype="bfloat16")
    out = tensors(tmp_path / "bf16")
    src = tensors(mlm_dir[0])
    assert {str(x.dtype) for x in out.values()} == {"bfloat16"}
    k = "roberta.embeddings.word_embeddings.weight"
    np.testing.assert_array_equal(out[k], src[k].astype(out[k].dtype))
    assert json.load(open(tmp_path / "bf16" / "config.json"))["dtype"] == "bfloat16"


# ------------------------------------------------------------------------------ file formats
def test_sharded_output_and_input(tmp_path, mlm_dir):
    convert(mlm_dir[0], tmp_path / "sharded", to="hf", max_shard_size=20_000)
    files = sorted(os.listdir(tmp_path / "sharded"))
    shards = [f for f in files if f.endswith(".safetensors")]
    assert len(shards) > 2 and "model.safetensors" not in files
    index = json.load(open(tmp_path / "sharded" / hf.SAFE_INDEX))
    assert set(index["weight_map"].values()) == set(shards)
    assert index["metadata"]["total_size"] == sum(x.nbytes for x in tensors(mlm_dir[0]).values())
    _, info = transformers.AutoModelForMaskedLM.from_pretrained(tmp_path / "sharded",
                                                                output_loading_info=True)
    assert not (info["missing_keys"] or info["unexpected_keys"] or info["mismatched_keys"])
    # Sharded input; rewriting unsharded into the same place removes the stale shards.
    convert(tmp_path / "sharded", tmp_path / "one", to="hf")
    assert_same_tensors(tensors(tmp_path / "one"), tensors(mlm_dir[0]))
    convert(tmp_path / "one", tmp_path / "sharded", to="hf")
    assert not [f for f in os.listdir(tmp_path / "sharded") if f.startswith("model-")]


def test_cli_max_shard_size(tmp_path, mlm_dir, capsys):
    assert cli.main(["convert", str(mlm_dir[0]), str(tmp_path / "cli"), "--to", "hf",
                     "--max-shard-size-gb", "2e-5"]) == 0
    assert os.path.isfile(tmp_path / "cli" / hf.SAFE_INDEX)
    assert cli.main(["convert", str(mlm_dir[0]), str(tmp_path / "bad"), "--to", "hf",
                     "--max-shard-size-gb", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == "roberta-jax convert: error: max shard size must be positive; got 0 bytes"


def _write_bin(path, state, config_src):
    os.makedirs(path, exist_ok=True)
    shutil.copy(os.path.join(config_src, "config.json"), path)
    torch.save(state, os.path.join(path, "pytorch_model.bin"))


def test_pytorch_bin_single_and_sharded(tmp_path, mlm_dir):
    src, model = mlm_dir
    state = {k: v.clone() for k, v in model.state_dict().items()}
    _write_bin(tmp_path / "bin", state, src)
    assert detect_format(tmp_path / "bin") == "hf"
    convert(tmp_path / "bin", tmp_path / "from_bin", to="hf")
    assert_same_tensors(tensors(tmp_path / "from_bin"), tensors(src))
    # Two .bin shards with an index, as transformers wrote them before safetensors.
    keys = sorted(state)
    shard_dir = tmp_path / "bin_sharded"
    os.makedirs(shard_dir)
    shutil.copy(os.path.join(src, "config.json"), shard_dir)
    weight_map = {}
    for i, part in enumerate((keys[: len(keys) // 2], keys[len(keys) // 2:])):
        name = f"pytorch_model-{i + 1:05d}-of-00002.bin"
        torch.save({k: state[k] for k in part}, shard_dir / name)
        weight_map.update({k: name for k in part})
    json.dump({"metadata": {}, "weight_map": weight_map}, open(shard_dir / hf.TORCH_INDEX, "w"))
    convert(shard_dir, tmp_path / "from_bin_sharded", to="hf")
    assert_same_tensors(tensors(tmp_path / "from_bin_sharded"), tensors(src))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_bin_converts_bit_exact(tmp_path, mlm_dir, dtype):
    """A .bin holding bf16/fp16 tensors -> safetensors with the same dtype and bits."""
    src, model = mlm_dir
    state = {k: v.to(dtype) for k, v in model.state_dict().items()}
    _write_bin(tmp_path / "bin", state, src)
    convert(tmp_path / "bin", tmp_path / "out", to="hf")
    out = tensors(tmp_path / "out")
    for k, v in out.items():
        ref = state[k].view(torch.int16).numpy()  # the raw 16-bit patterns
        assert str(v.dtype) == str(dtype).split(".")[1], k
        np.testing.assert_array_equal(v.view(np.int16), ref, err_msg=k)


def test_tokenizer_files_are_copied(tmp_path, mlm_dir):
    src = tmp_path / "src"
    shutil.copytree(mlm_dir[0], src)
    (src / "vocab.json").write_text('{"<s>": 0}')
    (src / "merges.txt").write_text("#version: 0.2\n")
    convert(src, tmp_path / "jax", to="jax")
    convert(tmp_path / "jax", tmp_path / "hf", to="hf")
    for d in ("jax", "hf"):
        assert (tmp_path / d / "vocab.json").read_text() == '{"<s>": 0}'
        assert (tmp_path / d / "merges.txt").exists()


# ------------------------------------------------------------------------------ strictness
def _edit_safetensors(src, dst, edit):
    from safetensors.numpy import save_file
    shutil.copytree(src, dst)
    state = edit(tensors(dst))
    save_file(state, os.path.join(dst, "model.safetensors"), metadata={"format": "pt"})


def test_missing_unexpected_and_misshapen_keys_are_listed(tmp_path, mlm_dir):
    k = "roberta.encoder.layer.1.intermediate.dense.weight"

    def drop(s):
        s.pop(k)
        return s

    def add(s):
        s["roberta.encoder.layer.1.extra.weight"] = np.zeros(3, np.float32)
        return s

    def reshape(s):
        s[k] = s[k][:, :16].copy()
        return s

    for name, edit, words in (("missing", drop, ["missing", k]),
                              ("unexpected", add, ["unexpected", "layer.1.extra.weight"]),
                              ("shape", reshape, ["shape", k, "(64, 16)"])):
        _edit_safetensors(mlm_dir[0], tmp_path / name, edit)
        with pytest.raises(ConversionError) as e:
            convert(tmp_path / name, tmp_path / f"{name}_out", to="jax")
        for w in words:
            assert w in str(e.value), (w, str(e.value))


def test_new_head_needs_permission_and_is_reported(tmp_path, capsys):
    save_hf(tmp_path / "base", "base")
    with pytest.raises(ConversionError, match="allow-new-head"):
        rj.from_pretrained(tmp_path / "base", task="sequence-classification")
    capsys.readouterr()
    model, params = rj.from_pretrained(tmp_path / "base", task="sequence-classification",
                                       allow_new_head=True)
    said = capsys.readouterr().out
    assert "initialised a new 'sequence-classification' head" in said
    assert "classifier.out_proj.weight" in said
    assert params["classifier_out"]["kernel"].shape == (32, 3)
    assert model.apply({"params": params}, IDS).shape == (2, 3)
    convert(tmp_path / "base", tmp_path / "qa", to="hf", task="question-answering", allow_new_head=True)
    assert "qa_outputs.weight" in tensors(tmp_path / "qa")


def test_mlm_loaded_as_base_drops_head_with_message(mlm_dir, capsys):
    model, params = rj.from_pretrained(mlm_dir[0], task="base")
    assert "ignoring" in capsys.readouterr().out
    assert set(params) == {"roberta"}
    assert model.apply({"params": params}, IDS).shape == (2, 8, 32)


@pytest.mark.parametrize("model_type", ["bert", "gpt2"])
def test_non_roberta_checkpoints_are_refused(tmp_path, model_type):
    (tmp_path / "m").mkdir()
    json.dump({"model_type": model_type, "architectures": ["X"]}, open(tmp_path / "m" / "config.json", "w"))
    (tmp_path / "m" / "model.safetensors").write_bytes(b"")
    with pytest.raises(ConversionError, match=f"model_type='{model_type}'"):
        rj.from_pretrained(tmp_path / "m")


def test_bad_paths_give_one_clear_error(tmp_path, capsys):
    with pytest.raises(ConversionError, match="does not exist"):
        rj.from_pretrained(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("x")
    with pytest.raises(ConversionError, match="notes.txt"):
        detect_format(tmp_path / "empty")
    (tmp_path / "cfg_only").mkdir()
    hf_config().save_pretrained(tmp_path / "cfg_only")
    with pytest.raises(ConversionError, match="holds no checkpoint"):
        rj.from_pretrained(tmp_path / "cfg_only")
    assert cli.main(["convert", str(tmp_path / "nope"), str(tmp_path / "out"), "--to", "hf"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "does not exist" in err[0]


def test_pickle_that_runs_code_is_refused(tmp_path, mlm_dir):
    marker = tmp_path / "PWNED"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    bad = tmp_path / "bad"
    os.makedirs(bad)
    shutil.copy(os.path.join(mlm_dir[0], "config.json"), bad)
    torch.save({"roberta.embeddings.word_embeddings.weight": torch.zeros(2), "x": Payload()},
               bad / "pytorch_model.bin")
    with pytest.raises(ConversionError, match="refusing to load"):
        convert(bad, tmp_path / "out", to="jax")
    assert not marker.exists()


def test_cli_convert(tmp_path, mlm_dir, capsys):
    assert cli.main(["convert", mlm_dir[0], str(tmp_path / "j"), "--to", "jax"]) == 0
    assert "converted hf" in capsys.readouterr().out
    assert detect_format(tmp_path / "j") == "jax"
    assert cli.main(["convert", str(tmp_path / "j"), str(tmp_path / "h"), "--to", "hf",
                     "--dtype", "float16"]) == 0
    assert {str(x.dtype) for x in tensors(tmp_path / "h").values()} == {"float16"}
