"""fairseq RoBERTa checkpoints (model.pt with dict.txt beside it) -> HF-named state_dict.

Both checkpoint layouts are read: old (`args`, an argparse.Namespace) and new (`cfg`, a plain
dict, possibly holding a Namespace), with either embedding-LayerNorm name (`emb_layer_norm`,
`layernorm_embedding`) and either prefix (`encoder.`, older `decoder.`). The file is read with
torch.load(weights_only=True), letting through argparse.Namespace and nothing else.

The vocabulary keeps fairseq's order: <s> <pad> </s> <unk>, the dict.txt symbols in order,
then <mask> (appended by RoBERTa's masked-LM task).
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Mapping

import numpy as np

from roberta_jax.config import ACTIVATIONS, RobertaConfig
from roberta_jax.convert.hf import torch_load, torch_to_numpy
from roberta_jax.errors import ConversionError
from roberta_jax.files import write_text_atomic

FAIRSEQ_SPECIALS = ("<s>", "<pad>", "</s>", "<unk>")
VOCAB_FILE = "vocab_fairseq.txt"
VOCAB_NOTE = ("token ids follow the fairseq dictionary: 0 <s>, 1 <pad>, 2 </s>, 3 <unk>, then "
              "dict.txt's symbols in file order, then <mask> last; vocab_fairseq.txt lists "
              "the symbol of id i on line i+1")
# Arch defaults for checkpoints whose args omit the head count.
_ARCH_HEADS = {"roberta_base": 12, "roberta_large": 16, "roberta_small": 8}

_LAYER = [  # fairseq layer suffix -> HF layer suffix
    ("self_attn.q_proj", "attention.self.query"), ("self_attn.k_proj", "attention.self.key"),
    ("self_attn.v_proj", "attention.self.value"), ("self_attn.out_proj", "attention.output.dense"),
    ("self_attn_layer_norm", "attention.output.LayerNorm"), ("fc1", "intermediate.dense"),
    ("fc2", "output.dense"), ("final_layer_norm", "output.LayerNorm"),
]
_FIXED = {
    "sentence_encoder.embed_tokens.weight": "roberta.embeddings.word_embeddings.weight",
    "sentence_encoder.embed_positions.weight": "roberta.embeddings.position_embeddings.weight",
    "sentence_encoder.emb_layer_norm.weight": "roberta.embeddings.LayerNorm.weight",
    "sentence_encoder.emb_layer_norm.bias": "roberta.embeddings.LayerNorm.bias",
    "sentence_encoder.layernorm_embedding.weight": "roberta.embeddings.LayerNorm.weight",
    "sentence_encoder.layernorm_embedding.bias": "roberta.embeddings.LayerNorm.bias",
    "lm_head.dense.weight": "lm_head.dense.weight", "lm_head.dense.bias": "lm_head.dense.bias",
    "lm_head.layer_norm.weight": "lm_head.layer_norm.weight",
    "lm_head.layer_norm.bias": "lm_head.layer_norm.bias",
    "lm_head.weight": "lm_head.decoder.weight", "lm_head.bias": "lm_head.bias",
}
_LAYER_RE = re.compile(r"^sentence_encoder\.layers\.(\d+)\.(.+)\.(weight|bias)$")
_HEAD_RE = re.compile(r"^classification_heads\.([^.]+)\.(dense|out_proj)\.(weight|bias)$")


def _opt(obj, name: str, default=None):
    if isinstance(obj, Mapping):
        return obj.get(name, default)
    return getattr(obj, name, default)


def model_args(ckpt: Mapping):
    """The model's hyperparameters: `args` (old layout) or `cfg['model']` (new layout)."""
    if _opt(ckpt, "args") is not None:
        return ckpt["args"]
    cfg = _opt(ckpt, "cfg")
    if cfg is not None and _opt(cfg, "model") is not None:
        return cfg["model"]
    raise ConversionError("the fairseq checkpoint has neither 'args' nor 'cfg.model'")


def read_dictionary(dict_file: str) -> list[str]:
    """fairseq Dictionary symbols in id order, with RoBERTa's <mask> appended."""
    symbols = list(FAIRSEQ_SPECIALS)
    with open(dict_file, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            line = line.rstrip("\n")
            if not line.strip():
                continue
            # "symbol count [#fairseq:overwrite]": the symbol is everything before the count.
            parts = line.rsplit(" ", 2 if line.endswith("#fairseq:overwrite") else 1)
            if len(parts) < 2:
                raise ConversionError(f"{dict_file}:{n} is not '<symbol> <count>': {line!r}")
            symbols.append(parts[0])
    return symbols + ["<mask>"]


def _hf_name(key: str) -> str | None:
    """fairseq key (prefix stripped) -> HF name; None for keys that are not weights."""
    if key in _FIXED:
        return _FIXED[key]
    m = _LAYER_RE.match(key)
    if m:
        i, sub, kind = m.groups()
        for fs, hf_sub in _LAYER:
            if sub == fs:
                return f"roberta.encoder.layer.{i}.{hf_sub}.{kind}"
    m = _HEAD_RE.match(key)
    if m:
        part = "dense" if m.group(2) == "dense" else "out_proj"
        return f"classifier.{part}.{m.group(3)}"
    return None


def load_fairseq(file: str) -> tuple[dict[str, np.ndarray], RobertaConfig, list[str] | None]:
    """(HF-named state_dict, config, vocabulary symbols or None without dict.txt)."""
    ckpt = torch_load(file, allowed_globals=(argparse.Namespace,))
    if not isinstance(ckpt, Mapping) or "model" not in ckpt:
        raise ConversionError(f"{file!r} is not a fairseq checkpoint (no 'model' entry)")
    args = model_args(ckpt)
    weights = ckpt["model"]
    prefixes = {k.split(".", 1)[0] for k in weights}
    prefix = "encoder." if "encoder" in prefixes else "decoder."
    state, unknown, heads = {}, [], set()
    for key, tensor in weights.items():
        if key.endswith((".version", "_float_tensor")):  # bookkeeping buffers, not weights
            continue
        # Heads sit beside the encoder (classification_heads.NAME...), the rest under it.
        sub = key[len(prefix):] if key.startswith(prefix) else key
        name = _hf_name(sub) if sub != key or key.startswith("classification_heads.") else None
        if name is None:
            unknown.append(key)
            continue
        if name.startswith("classifier."):
            heads.add(_HEAD_RE.match(sub).group(1))
        state[name] = torch_to_numpy(tensor)
    if unknown:
        raise ConversionError(f"{file}: keys roberta_jax cannot map: {sorted(unknown)[:20]}")
    if len(heads) > 1:
        raise ConversionError(f"{file} has {len(heads)} classification heads {sorted(heads)}; "
                              f"roberta_jax models carry one")
    config = _config(args, state, file, heads)
    # fairseq RoBERTa has no segment embeddings; HF's single token-type row of zeros adds nothing.
    state["roberta.embeddings.token_type_embeddings.weight"] = np.zeros(
        (1, config.hidden_size), state["roberta.embeddings.word_embeddings.weight"].dtype)
    dict_file = os.path.join(os.path.dirname(os.path.abspath(file)), "dict.txt")
    vocab = read_dictionary(dict_file) if os.path.isfile(dict_file) else None
    if vocab is not None and len(vocab) != config.vocab_size:
        raise ConversionError(f"{dict_file} gives {len(vocab)} ids (with <s> <pad> </s> <unk> and "
                              f"<mask>) but the checkpoint's embedding has {config.vocab_size} rows")
    return state, config, vocab


def _config(args, state: dict, file: str, heads: set[str]) -> RobertaConfig:
    for flag in ("encoder_normalize_before", "untie_weights_roberta"):
        if _opt(args, flag, False):
            raise ConversionError(f"{file}: {flag}=True is not a RoBERTa layout roberta_jax supports")
    vocab, hidden = state["roberta.embeddings.word_embeddings.weight"].shape
    layers = len({k.split(".")[3] for k in state if k.startswith("roberta.encoder.layer.")})
    heads_n = _opt(args, "encoder_attention_heads") or _ARCH_HEADS.get(_opt(args, "arch", ""))
    if heads_n is None:
        raise ConversionError(f"{file}: the checkpoint's args give no encoder_attention_heads")
    act = _opt(args, "activation_fn", "gelu")
    if act not in ACTIVATIONS:
        raise ConversionError(f"{file}: activation_fn={act!r} is not one of {ACTIVATIONS}")
    num_labels = state["classifier.out_proj.weight"].shape[0] if heads else 2
    return RobertaConfig(
        vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers,
        num_attention_heads=int(heads_n),
        intermediate_size=state["roberta.encoder.layer.0.intermediate.dense.weight"].shape[0],
        hidden_act=act, hidden_dropout_prob=float(_opt(args, "dropout", 0.1)),
        attention_probs_dropout_prob=float(_opt(args, "attention_dropout", 0.1)),
        max_position_embeddings=state["roberta.embeddings.position_embeddings.weight"].shape[0],
        type_vocab_size=1, layer_norm_eps=1e-5, pad_token_id=1, bos_token_id=0, eos_token_id=2,
        num_labels=int(num_labels))


def write_vocab(out_dir: str, vocab: list[str], dict_file: str | None) -> list[str]:
    """vocab_fairseq.txt (symbol of id i on line i+1), dict.txt as given, and a README line."""
    from roberta_jax.convert.hf import copy_tokenizer

    files = []
    for name, text in ((VOCAB_FILE, "".join(f"{s}\n" for s in vocab)),
                       ("README.md", f"Converted from a fairseq RoBERTa checkpoint by roberta_jax.\n\n"
                                     f"Vocabulary: {VOCAB_NOTE}.\n")):
        write_text_atomic(os.path.join(out_dir, name), text)
        files.append(name)
    if dict_file:
        files += copy_tokenizer(os.path.dirname(dict_file), out_dir)
    return files
