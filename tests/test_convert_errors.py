"""Damaged or foreign checkpoints and interrupted writes: every case is one line on stderr and
exit status 2 from the CLI (never a traceback), and an interrupted save never leaves a
directory that looks complete."""

import json
import os
import shutil

import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import load_file

from roberta_jax import cli
from roberta_jax.convert import convert, detect_format, hf
from roberta_jax.errors import ConversionError


@pytest.fixture(scope="module")
def src(tmp_path_factory):
    """A tiny HF masked-lm directory and its state_dict."""
    path = tmp_path_factory.mktemp("src") / "mlm"
    torch.manual_seed(0)
    cfg = transformers.RobertaConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1,
                                     num_attention_heads=2, intermediate_size=32,
                                     max_position_embeddings=20, type_vocab_size=1)
    transformers.RobertaForMaskedLM(cfg).save_pretrained(path)
    return path, load_file(path / "model.safetensors")


def damaged(tmp_path, src, name: str, files: dict) -> str:
    """A copy of the source's config.json plus `files` ({name: bytes | str})."""
    d = tmp_path / name
    d.mkdir()
    shutil.copy(src[0] / "config.json", d)
    for f, content in files.items():
        mode = "wb" if isinstance(content, bytes) else "w"
        with open(d / f, mode) as fh:
            fh.write(content)
    return str(d)


def run_cli(capsys, *argv) -> tuple[int, list[str]]:
    rc = cli.main(["convert", *map(str, argv)])
    return rc, capsys.readouterr().err.strip().splitlines()


def test_damaged_weight_files_are_one_line_errors(tmp_path, src, capsys):
    st = (src[0] / "model.safetensors").read_bytes()
    torch.save({k: torch.from_numpy(v) for k, v in src[1].items()}, tmp_path / "full.bin")
    pt = (tmp_path / "full.bin").read_bytes()
    cases = {
        "truncated_st": ({"model.safetensors": st[: len(st) // 2]}, "not a readable safetensors file"),
        "garbage_st": ({"model.safetensors": b"not a safetensors file"}, "not a readable safetensors"),
        "truncated_bin": ({"pytorch_model.bin": pt[: len(pt) // 2]}, "cannot read .* as a PyTorch"),
        "index_bad_json": ({hf.SAFE_INDEX: "{nope"}, "is not valid JSON"),
        "index_no_map": ({hf.SAFE_INDEX: "{}"}, "has no 'weight_map'"),
        "index_missing_shard": ({hf.SAFE_INDEX: json.dumps({"weight_map": {"a": "model-00001-of-00002.safetensors"}})},
                                "names shards that are missing.*model-00001-of-00002"),
    }
    for name, (files, pattern) in cases.items():
        path = damaged(tmp_path, src, name, files)
        with pytest.raises(ConversionError, match=pattern):
            convert(path, tmp_path / f"out_{name}", to="jax")
        rc, err = run_cli(capsys, path, tmp_path / f"cli_{name}", "--to", "hf")
        assert rc == 2 and len(err) == 1 and err[0].startswith("roberta-jax convert: error:"), (name, err)
    (tmp_path / "junk.pt").write_bytes(b"\x80\x02junk that is no pickle")
    rc, err = run_cli(capsys, tmp_path / "junk.pt", tmp_path / "o", "--to", "hf")
    assert rc == 2 and len(err) == 1 and "junk.pt" in err[0]


def test_bad_config_json_is_a_one_line_error(tmp_path, src, capsys):
    st = (src[0] / "model.safetensors").read_bytes()
    good = json.loads((src[0] / "config.json").read_text())
    cases = {"bad_json": ("{bad", "is not valid JSON"),
             "a_list": ("[1, 2]", "holds a JSON list"),
             "string_field": (json.dumps({**good, "hidden_size": "16"}), "hidden_size='16' must be an integer"),
             "label_gap": (json.dumps({**good, "id2label": {"0": "a", "2": "c"}}), r"id2label ids \[0, 2\]"),
             "heads": (json.dumps({**good, "num_attention_heads": 3}),
                       "hidden_size=16 is not divisible by num_attention_heads=3")}
    for name, (text, pattern) in cases.items():
        path = damaged(tmp_path, src, name, {"model.safetensors": st})
        (tmp_path / name / "config.json").write_text(text)
        with pytest.raises(ConversionError, match=pattern):
            detect_format(path)
        rc, err = run_cli(capsys, path, tmp_path / f"out_{name}", "--to", "jax")
        assert rc == 2 and len(err) == 1 and name in err[0], (name, err)


def test_damaged_jax_dir_is_a_one_line_error(tmp_path, src, capsys):
    convert(src[0], tmp_path / "j", to="jax")
    data = tmp_path / "j" / "params" / "ocdbt.process_0" / "d"
    for f in os.listdir(data):  # truncate every data file: the metadata still reads
        with open(data / f, "r+b") as fh:
            fh.truncate(4)
    with pytest.raises(ConversionError, match="cannot restore the params"):
        convert(tmp_path / "j", tmp_path / "h", to="hf")
    rc, err = run_cli(capsys, tmp_path / "j", tmp_path / "h2", "--to", "hf")
    assert rc == 2 and len(err) == 1 and "cannot restore the params" in err[0]


@pytest.mark.parametrize("to", ["hf", "jax"])
def test_interrupted_save_does_not_look_complete(tmp_path, src, monkeypatch, to):
    """A save over an earlier complete one, killed while writing weights, leaves no
    config.json, so the directory is refused rather than read as mixed old/new weights."""
    dst = tmp_path / "dst"
    convert(src[0], dst, to=to)
    assert detect_format(dst) == to

    def die(*args, **kwargs):
        raise KeyboardInterrupt

    if to == "hf":
        monkeypatch.setattr(hf, "write_weights", die)
    else:
        monkeypatch.setattr("roberta_jax.convert.jax_dir._numpy_leaves_to_jax", die)
    with pytest.raises(KeyboardInterrupt):
        convert(src[0], dst, to=to, dtype="float16")
    assert not (dst / "config.json").exists()
    with pytest.raises(ConversionError, match="holds no checkpoint|has no config.json"):
        detect_format(dst)
    monkeypatch.undo()
    files = convert(src[0], dst, to=to, dtype="float16")  # a rerun completes it
    assert detect_format(dst) == to
    assert str(dst / "config.json") in files and all(os.path.exists(f) for f in files), files
    if to == "hf":
        assert {x.dtype for x in load_file(dst / "model.safetensors").values()} == {np.dtype(np.float16)}
