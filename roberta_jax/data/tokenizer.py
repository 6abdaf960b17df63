"""Byte-level BPE tokenizers with RoBERTa's special tokens (HF `tokenizers` / `transformers`).

A trained directory holds vocab.json, merges.txt, tokenizer.json and tokenizer_config.json, so
`transformers.AutoTokenizer.from_pretrained(dir)` gives the same RobertaTokenizerFast as
`load_tokenizer(dir)`. Any GPT-2/RoBERTa-style directory loads too (tokenizer.json,
vocab.json + merges.txt, or GPT-2's original encoder.json + vocab.bpe).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterable

import numpy as np

from roberta_jax.data.sources import SourceStats, iter_documents
from roberta_jax.errors import DataError

# Ids 0..3 as in fairseq/HF RoBERTa; <mask> is appended last, as in roberta-base (50264).
SPECIAL_TOKENS = ("<s>", "<pad>", "</s>", "<unk>")
MASK_TOKEN = "<mask>"
WORD_START = "\u0120"  # byte-level BPE's "Ġ": the token begins with a space


def train_tokenizer(sources: Iterable[str], out_dir: str, *, vocab_size: int,
                    min_frequency: int = 2, doc_split: str = "file",
                    text_field: str = "text") -> "RobertaTokenizerFast":  # noqa: F821
    """Train a byte-level BPE of `vocab_size` ids (fewer, and said so, if the text runs out of
    merges) on SOURCES and save it to out_dir; `<mask>` is the last id."""
    from tokenizers import ByteLevelBPETokenizer

    # 256 byte symbols + 5 specials is the smallest vocabulary byte-level BPE can have.
    if vocab_size < 256 + len(SPECIAL_TOKENS) + 1:
        raise DataError(f"vocab_size {vocab_size} is below the byte-level minimum of "
                        f"{256 + len(SPECIAL_TOKENS) + 1}")
    stats = SourceStats()
    docs = iter_documents(sources, stats, doc_split=doc_split, text_field=text_field)
    bpe = ByteLevelBPETokenizer(add_prefix_space=False)
    # One id is kept free so that <mask>, added afterwards, becomes the last id.
    bpe.train_from_iterator(docs, vocab_size=vocab_size - 1, min_frequency=min_frequency,
                            special_tokens=list(SPECIAL_TOKENS), show_progress=True)
    if bpe.get_vocab_size() <= 256 + len(SPECIAL_TOKENS):
        raise DataError(f"no text to train a tokenizer on in sources {list(sources)}")
    os.makedirs(out_dir, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        bpe.save_model(tmp)
        tok = _from_vocab_merges(os.path.join(tmp, "vocab.json"), os.path.join(tmp, "merges.txt"))
    tok.model_max_length = 512
    tok.save_pretrained(out_dir)
    tok.backend_tokenizer.model.save(out_dir)  # vocab.json + merges.txt for slow-tokenizer users
    if len(tok) < vocab_size:  # BPE stops when no pair reaches min_frequency; say so
        print(f"tokenizer: the sources support only {len(tok)} of the {vocab_size} ids asked "
              f"for (min_frequency={min_frequency})")
    print(f"tokenizer: {len(tok)} ids (<mask>={tok.mask_token_id}) -> {out_dir}")
    return tok


def _from_vocab_merges(vocab_path: str, merges_path: str) -> "RobertaTokenizerFast":  # noqa: F821
    """A RoBERTa fast tokenizer from a GPT-2-style vocab (json) and merges ("a b" lines) file."""
    from transformers import RobertaTokenizerFast

    with open(vocab_path, encoding="utf-8") as f:
        vocab = json.load(f)
    with open(merges_path, encoding="utf-8") as f:
        # "#version: 0.2" headers and blank lines are not merges.
        merges = [tuple(line.split(" ")) for line in f.read().split("\n")
                  if line and not line.startswith("#version")]
    return RobertaTokenizerFast(vocab=vocab, merges=merges)


def load_tokenizer(path: str) -> "RobertaTokenizerFast":  # noqa: F821
    """A RobertaTokenizerFast from a trained, HF RoBERTa/GPT-2 or original GPT-2 directory."""
    from transformers import RobertaTokenizerFast

    if not os.path.isdir(path):
        raise DataError(f"tokenizer directory {path!r} does not exist")
    has = lambda *names: all(os.path.exists(os.path.join(path, n)) for n in names)  # noqa: E731
    if has("tokenizer.json") or has("vocab.json", "merges.txt"):
        return RobertaTokenizerFast.from_pretrained(path)
    if has("encoder.json", "vocab.bpe"):  # OpenAI's original GPT-2 release names
        return _from_vocab_merges(os.path.join(path, "encoder.json"), os.path.join(path, "vocab.bpe"))
    raise DataError(f"{path!r} holds no tokenizer (expected tokenizer.json, vocab.json + "
                    f"merges.txt, or encoder.json + vocab.bpe); found {sorted(os.listdir(path))}")


def tokenizer_hash(path_or_tok) -> str:
    """sha256 of what decides the ids (vocab, merges, added tokens), independent of file layout."""
    tok = load_tokenizer(path_or_tok) if isinstance(path_or_tok, (str, os.PathLike)) else path_or_tok
    state = json.loads(tok.backend_tokenizer.to_str())
    canonical = {"vocab": sorted(tok.get_vocab().items()), "merges": state["model"]["merges"],
                 "special": sorted((t, tok.convert_tokens_to_ids(t)) for t in tok.all_special_tokens)}
    return hashlib.sha256(json.dumps(canonical, sort_keys=True).encode()).hexdigest()


def special_ids(tok) -> tuple[int, ...]:
    """Sorted ids never to be masked: <s>, <pad>, </s>, <unk>, <mask> and any other special."""
    return tuple(sorted(set(tok.all_special_ids)))


def word_start_table(tok, size: int | None = None) -> np.ndarray:
    """bool (size,): the token starts a word (leads with `Ġ`), for whole-word masking. size
    defaults to len(tok); a model's vocabulary may be larger (ids past the tokenizer's are
    not word starts) or smaller (the table is cut)."""
    table = np.zeros(len(tok) if size is None else size, dtype=bool)
    for token, i in tok.get_vocab().items():
        if i < table.shape[0]:
            table[i] = token.startswith(WORD_START)
    return table
