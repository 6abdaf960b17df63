"""fill_mask against transformers' fill-mask pipeline on the same (converted) weights."""

import numpy as np
import pytest
import torch
import transformers

import roberta_jax as rj
from roberta_jax import cli
from roberta_jax.data.tokenizer import train_tokenizer
from roberta_jax.errors import InputError
from roberta_jax.inference import fill_mask, fill_mask_cli

TEXT = ("It is a truth universally acknowledged, that a single man in possession of a good "
        "fortune, must be in want of a wife. ") * 20


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("fill")
    (root / "text.txt").write_text(TEXT)
    tok = train_tokenizer([str(root / "text.txt")], str(root / "tok"), vocab_size=300, min_frequency=1)
    config = transformers.RobertaConfig(
        vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=24, layer_norm_eps=1e-5, type_vocab_size=1)
    torch.manual_seed(0)
    hf = transformers.RobertaForMaskedLM(config).eval()
    with torch.no_grad():
        hf.lm_head.bias.normal_(0, 2.0)  # spread the probabilities so the ranking is meaningful
    hf.save_pretrained(root / "hf")
    tok.save_pretrained(root / "hf")
    return str(root / "hf"), hf, tok


def test_fill_mask_matches_transformers_pipeline(model_dir):
    path, hf, tok = model_dir
    model, params = rj.from_pretrained(path, task="masked-lm")
    texts = ["a single <mask> in possession", "It is a <mask> universally <mask>."]
    ours = fill_mask(model, params, tok, texts, top_k=4)
    pipe = transformers.pipeline("fill-mask", model=hf, tokenizer=tok, top_k=4)
    for text, per_mask in zip(texts, ours):
        ref = pipe(text)
        ref = [ref] if isinstance(ref[0], dict) else ref  # one mask -> flat list
        assert len(per_mask) == len(ref) == text.count("<mask>")
        for preds, ref_preds in zip(per_mask, ref):
            assert [t for t, _ in preds] == [r["token_str"] for r in ref_preds]
            np.testing.assert_allclose([p for _, p in preds], [r["score"] for r in ref_preds],
                                       rtol=1e-5, atol=1e-7)
            assert all(a >= b for (_, a), (_, b) in zip(preds, preds[1:]))


def test_fill_mask_errors(model_dir):
    path, _, tok = model_dir
    model, params = rj.from_pretrained(path)
    with pytest.raises(InputError, match="no <mask>"):
        fill_mask(model, params, tok, ["no mask here"])
    with pytest.raises(InputError, match="longer than the model's limit 22"):
        fill_mask(model, params, tok, ["<mask> " + "fortune " * 30])


def test_fill_mask_cli_prints_predictions(model_dir, capsys):
    path, _, _ = model_dir
    results = fill_mask_cli(path, ["a good <mask>."], top_k=3)
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "a good <mask>." and out[1].startswith("  <mask>:")
    assert all(repr(t) in out[1] for t, _ in results[0][0])
    assert cli.main(["fill-mask", path, "nothing masked"]) == 2
    assert "no <mask>" in capsys.readouterr().err
