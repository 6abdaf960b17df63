"""Declarative Hugging Face PyTorch <-> roberta_jax name map, with per-key hooks.

A state_dict is a flat mapping of HF names to numpy arrays; our params are the nested dict
that `roberta_jax.model` creates. Both directions check the full key set and every shape
and name the offending keys. Values are moved, never rounded: conversions are bit-exact.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Iterator, Mapping

import numpy as np

from roberta_jax.config import RobertaConfig
from roberta_jax.errors import ConversionError

Params = dict
Log = Callable[[str], None]

# Buffers that some HF checkpoints carry; they are recomputed, never weights.
_IGNORED_SUFFIXES = ("embeddings.position_ids", "embeddings.token_type_ids")


# ------------------------------------------------------------------------------ hooks
@dataclasses.dataclass(frozen=True)
class Hook:
    """How a tensor changes between HF (torch layout) and ours (flax layout)."""

    to_ours: Callable[[np.ndarray, RobertaConfig], np.ndarray]
    to_hf: Callable[[np.ndarray, RobertaConfig], np.ndarray]


def _heads(c: RobertaConfig):
    return c.num_attention_heads, c.head_dim


COPY = Hook(lambda x, c: x, lambda x, c: x)
# torch Linear stores (out, in); flax Dense kernels are (in, out).
LINEAR = Hook(lambda x, c: x.T, lambda x, c: x.T)
# q/k/v: (H*K, D) <-> (D, H, K); their biases (H*K,) <-> (H, K).
QKV = Hook(lambda x, c: x.T.reshape(c.hidden_size, *_heads(c)),
           lambda x, c: x.reshape(c.hidden_size, -1).T)
QKV_BIAS = Hook(lambda x, c: x.reshape(*_heads(c)), lambda x, c: x.reshape(-1))
# attention output: (D, H*K) <-> (H, K, D).
ATTN_OUT = Hook(lambda x, c: x.T.reshape(*_heads(c), c.hidden_size),
                lambda x, c: x.reshape(-1, c.hidden_size).T)


def _dense(hf: str, ours: str, hook: Hook = LINEAR):
    return [(f"{hf}.weight", f"{ours}/kernel", hook), (f"{hf}.bias", f"{ours}/bias", COPY)]


def _norm(hf: str, ours: str):
    return [(f"{hf}.weight", f"{ours}/scale", COPY), (f"{hf}.bias", f"{ours}/bias", COPY)]


# ------------------------------------------------------------------------------ rules
# (HF name, our path, hook). "{i}" is the layer index.
EMBEDDING_RULES = [
    ("roberta.embeddings.word_embeddings.weight", "roberta/embeddings/word_embeddings/embedding", COPY),
    ("roberta.embeddings.position_embeddings.weight", "roberta/embeddings/position_embeddings/embedding", COPY),
    ("roberta.embeddings.token_type_embeddings.weight", "roberta/embeddings/token_type_embeddings/embedding", COPY),
    *_norm("roberta.embeddings.LayerNorm", "roberta/embeddings/LayerNorm"),
]
_L, _O = "roberta.encoder.layer.{i}", "roberta/encoder/layers_{i}"
LAYER_RULES = [
    *_dense(f"{_L}.attention.self.query", f"{_O}/attention/query", QKV),
    *_dense(f"{_L}.attention.self.key", f"{_O}/attention/key", QKV),
    *_dense(f"{_L}.attention.self.value", f"{_O}/attention/value", QKV),
    *_dense(f"{_L}.attention.output.dense", f"{_O}/attention/output", ATTN_OUT),
    *_norm(f"{_L}.attention.output.LayerNorm", f"{_O}/attention_norm"),
    *_dense(f"{_L}.intermediate.dense", f"{_O}/intermediate"),
    *_dense(f"{_L}.output.dense", f"{_O}/output"),
    *_norm(f"{_L}.output.LayerNorm", f"{_O}/output_norm"),
]
# Biases of q/k/v change shape too.
LAYER_RULES = [(h, o, QKV_BIAS if ".self." in h and h.endswith(".bias") else k)
               for h, o, k in LAYER_RULES]
POOLER_RULES = _dense("roberta.pooler.dense", "roberta/pooler")
HEAD_RULES: dict[str, list] = {
    "base": [],
    "masked-lm": [*_dense("lm_head.dense", "lm_head_dense"), *_norm("lm_head.layer_norm", "lm_head_norm"),
                  ("lm_head.bias", "lm_head_bias", COPY)],
    "sequence-classification": [*_dense("classifier.dense", "classifier_dense"),
                                *_dense("classifier.out_proj", "classifier_out")],
    "token-classification": _dense("classifier", "classifier"),
    "question-answering": _dense("qa_outputs", "qa_outputs"),
    "multiple-choice": [*POOLER_RULES, *_dense("classifier", "classifier")],
}
HF_ARCHITECTURES = {
    "base": "RobertaModel",
    "masked-lm": "RobertaForMaskedLM",
    "sequence-classification": "RobertaForSequenceClassification",
    "token-classification": "RobertaForTokenClassification",
    "question-answering": "RobertaForQuestionAnswering",
    "multiple-choice": "RobertaForMultipleChoice",
}
TASK_OF_ARCHITECTURE = {v: k for k, v in HF_ARCHITECTURES.items()}
# Names tied to another tensor in HF: (alias, canonical).
_TIED = {"lm_head.decoder.weight": "roberta.embeddings.word_embeddings.weight",
         "lm_head.decoder.bias": "lm_head.bias"}


def rules(config: RobertaConfig, task: str, pooler: bool = False) -> list[tuple[str, str, Hook]]:
    if task not in HEAD_RULES:
        raise ConversionError(f"unknown task {task!r}; choose one of {list(HEAD_RULES)}")
    out = list(EMBEDDING_RULES)
    for i in range(config.num_hidden_layers):
        out += [(h.format(i=i), o.format(i=i), k) for h, o, k in LAYER_RULES]
    if pooler and task != "multiple-choice":
        out += POOLER_RULES
    return out + HEAD_RULES[task]


def _head_keys(task: str) -> set[str]:
    return {h for h, _, _ in HEAD_RULES[task]}


def infer_task(shapes: Mapping[str, tuple[int, ...]]) -> str:
    """The task whose head a state_dict carries ({name: shape}); "base" when none."""
    keys = set(normalize_hf_keys(shapes))
    for task in ("masked-lm", "sequence-classification", "question-answering"):
        if _head_keys(task) <= keys:
            return task
    if "classifier.weight" in keys:
        single = tuple(shapes["classifier.weight"])[0] == 1
        return "multiple-choice" if single and "roberta.pooler.dense.weight" in keys \
            else "token-classification"
    return "base"


# ------------------------------------------------------------------------ nested dicts
def _set(tree: dict, path: str, value) -> None:
    *parents, leaf = path.split("/")
    for p in parents:
        tree = tree.setdefault(p, {})
    tree[leaf] = value


def _get(tree: Mapping, path: str):
    for p in path.split("/"):
        tree = tree[p]
    return tree


def flatten(tree: Mapping, prefix: str = "") -> Iterator[tuple[str, object]]:
    for k, v in tree.items():
        if isinstance(v, Mapping):
            yield from flatten(v, f"{prefix}{k}/")
        else:
            yield f"{prefix}{k}", v


def stack_layers(params: Params, n_layers: int) -> Params:
    """Unrolled layers_0..layers_{n-1} -> one 'layers' subtree with a leading layer axis
    (the layout of nn.scan)."""
    enc = params["roberta"]["encoder"]
    layers = [dict(flatten(enc.pop(f"layers_{i}"))) for i in range(n_layers)]
    stacked: dict = {}
    for path in layers[0]:
        _set(stacked, path, np.stack([np.asarray(layer[path]) for layer in layers]))
    enc["layers"] = stacked
    return params


def unstack_layers(params: Params, n_layers: int) -> Params:
    enc = params["roberta"]["encoder"]
    stacked = dict(flatten(enc.pop("layers")))
    for i in range(n_layers):
        layer: dict = {}
        for path, value in stacked.items():
            _set(layer, path, value[i])
        enc[f"layers_{i}"] = layer
    return params


# -------------------------------------------------------------------- HF -> roberta_jax
def normalize_hf_keys(keys) -> dict[str, str]:
    """Map each source key to its canonical HF name: adds the 'roberta.' prefix that
    RobertaModel checkpoints lack; drops buffers. Returns {canonical: source_key}."""
    keys = list(keys)
    bare = not any(k.startswith("roberta.") for k in keys)
    out = {}
    for k in keys:
        if k.endswith(_IGNORED_SUFFIXES):
            continue
        canon = f"roberta.{k}" if bare and k.split(".")[0] in ("embeddings", "encoder", "pooler") else k
        out[canon] = k
    return out


def hf_to_params(state: Mapping[str, np.ndarray], config: RobertaConfig, task: str, *,
                 new_head: Params | None = None, pooler: bool = False,
                 log: Log = print) -> Params:
    """HF state_dict (name -> array; may load lazily on access) -> our params.

    Strict: missing, unexpected or misshapen keys raise ConversionError listing them.
    A source head belonging to another task is dropped (and said so). If the target task's
    head is missing, `new_head` (freshly initialised params for it) is used, else it is an
    error (the CLI's --allow-new-head supplies it).
    """
    names = normalize_hf_keys(state.keys())
    want = rules(config, task, pooler)
    want_keys = {h for h, _, _ in want}
    extra = set(names) - want_keys - set(_TIED)
    other_heads = {k for k in extra if any(k in _head_keys(t) for t in HEAD_RULES)} | \
        {k for k in extra if k.startswith("roberta.pooler.")}
    if extra - other_heads:
        raise ConversionError(f"unexpected keys for task {task!r}: {sorted(extra - other_heads)[:20]}")
    if other_heads:
        log(f"ignoring {len(other_heads)} head weights not used by task {task!r}: "
            f"{sorted(other_heads)[:6]}")
    if "lm_head.bias" in want_keys and "lm_head.bias" not in names and "lm_head.decoder.bias" in names:
        names["lm_head.bias"] = names["lm_head.decoder.bias"]  # older checkpoints name it so
    missing = sorted(want_keys - set(names))
    head_missing = [k for k in missing if k in _head_keys(task) or k.startswith("roberta.pooler.")]
    if len(head_missing) != len(missing):
        raise ConversionError(f"missing keys for task {task!r}: {[k for k in missing if k not in head_missing][:20]}")
    if head_missing and new_head is None:
        raise ConversionError(f"the checkpoint has no {task!r} head (missing {head_missing}); "
                              f"pass --allow-new-head (allow_new_head=True) to initialise it")
    params: Params = {}
    bad_shapes = []
    for hf, ours, hook in want:
        if hf in head_missing:
            _set(params, ours, np.asarray(_get(new_head, ours)))
            continue
        value = hook.to_ours(np.asarray(state[names[hf]]), config)
        expected = _expected_shape(config, ours, task)
        if tuple(value.shape) != expected:
            bad_shapes.append(f"{names[hf]}: {tuple(np.shape(state[names[hf]]))} (ours {ours}: "
                              f"expected {expected})")
            continue
        _set(params, ours, value)
    if bad_shapes:
        raise ConversionError(f"shape mismatch in {len(bad_shapes)} keys: {bad_shapes[:10]}")
    if head_missing:
        log(f"initialised a new {task!r} head: {head_missing}")
    _check_tied(state, names, params)
    return stack_layers(params, config.num_hidden_layers) if config.scan_layers else params


def _check_tied(state, names, params) -> None:
    for alias, canon in _TIED.items():
        if alias in names and canon in names and alias != canon:
            a, b = np.asarray(state[names[alias]]), np.asarray(state[names[canon]])
            if a.shape != b.shape or not np.array_equal(a, b):
                raise ConversionError(f"{alias} differs from {canon}; roberta_jax ties them "
                                      f"(untied LM decoders are not supported)")


def _expected_shape(c: RobertaConfig, ours: str, task: str) -> tuple[int, ...]:
    D, F, V, H, K = c.hidden_size, c.intermediate_size, c.vocab_size, c.num_attention_heads, c.head_dim
    if ours == "lm_head_bias":
        return (V,)
    leaf = ours.split("/")
    name, kind = leaf[-2], leaf[-1]
    table = {
        "word_embeddings": (V, D), "position_embeddings": (c.max_position_embeddings, D),
        "token_type_embeddings": (c.type_vocab_size, D),
    }
    if name in table:
        return table[name]
    if kind == "scale" or (kind == "bias" and name.endswith(("norm", "LayerNorm"))):
        return (D,)
    if name in ("query", "key", "value"):
        return (D, H, K) if kind == "kernel" else (H, K)
    if name == "output" and leaf[-3] == "attention":
        return (H, K, D) if kind == "kernel" else (D,)
    dims = {"intermediate": (D, F), "output": (F, D), "pooler": (D, D), "lm_head_dense": (D, D),
            "classifier_dense": (D, D), "classifier_out": (D, c.num_labels),
            "qa_outputs": (D, c.num_labels),
            "classifier": (D, 1) if task == "multiple-choice" else (D, c.num_labels)}[name]
    return dims if kind == "kernel" else (dims[1],)


# -------------------------------------------------------------------- roberta_jax -> HF
def params_to_hf(params: Params, config: RobertaConfig, task: str, *,
                 pooler: bool = False) -> dict[str, np.ndarray]:
    """Our params -> the state_dict transformers' save_pretrained writes for the task
    (tied decoder weight and bias alias omitted; RobertaModel keys without 'roberta.')."""
    flat = dict(flatten(params))
    if config.scan_layers or any(k.startswith("roberta/encoder/layers/") for k in flat):
        params = unstack_layers(_copy_tree(params), config.num_hidden_layers)
        flat = dict(flatten(params))
    want = rules(config, task, pooler or "roberta/pooler/kernel" in flat and task == "base")
    want_paths = {o for _, o, _ in want}
    missing, extra = sorted(want_paths - set(flat)), sorted(set(flat) - want_paths)
    if missing or extra:
        raise ConversionError(f"params do not match task {task!r}: missing {missing[:10]}, "
                              f"unexpected {extra[:10]}")
    out = {}
    for hf, ours, hook in want:
        value = np.asarray(flat[ours])
        expected = _expected_shape(config, ours, task)
        if tuple(value.shape) != expected:
            raise ConversionError(f"{ours} has shape {tuple(value.shape)}, expected {expected}")
        name = hf[len("roberta."):] if task == "base" else hf
        out[name] = np.ascontiguousarray(hook.to_hf(value, config))
    return out


def _copy_tree(tree):
    return {k: _copy_tree(v) if isinstance(v, Mapping) else v for k, v in tree.items()}
