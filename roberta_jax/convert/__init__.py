"""Checkpoint conversion and the public load/save API.

Formats (found by `detect_format`): "hf" (transformers directory), "jax" (roberta_jax model
directory), "fairseq" (model.pt with dict.txt beside it), "workdir" (a pretraining workdir).
Everything goes through the strict name map in mapping.py, so every path checks key sets and
shapes, and values are moved bit-exactly unless a dtype is asked for.
"""

from __future__ import annotations

import dataclasses
import os

import jax
import numpy as np

from roberta_jax.config import RobertaConfig
from roberta_jax.convert import fairseq, hf, jax_dir, mapping, workdir
from roberta_jax.convert.workdir import load_workdir_params
from roberta_jax.errors import ConversionError

FORMATS = ("hf", "jax", "fairseq", "workdir")
DTYPES = ("float32", "bfloat16", "float16")


def detect_format(path: str | os.PathLike) -> str:
    """"hf" | "jax" | "fairseq" | "workdir", or a ConversionError naming what was found."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ConversionError(f"{path!r} does not exist")
    if os.path.isfile(path):
        if path.endswith(".pt"):
            return "fairseq"
        raise ConversionError(f"{path!r} is a file but not a fairseq .pt checkpoint; pass an HF "
                              f"or roberta_jax model directory, a fairseq .pt, or a pretraining workdir")
    if workdir.is_workdir(path):
        return "workdir"
    if os.path.isfile(os.path.join(path, "config.json")):
        hf.read_config(path)  # refuses non-RoBERTa model types early, naming them
        if hf.weight_files(path):
            return "hf"
        if jax_dir.is_jax_dir(path):
            return "jax"
    if os.path.isfile(os.path.join(path, "model.pt")):
        return "fairseq"
    raise ConversionError(f"{path!r} holds no checkpoint roberta_jax reads (expected an HF dir with "
                          f"{hf.SAFE_WEIGHTS} or {hf.TORCH_WEIGHTS}, a roberta_jax dir with "
                          f"{jax_dir.PARAMS_DIR}/, a fairseq model.pt, or a workdir with "
                          f"{workdir.CHECKPOINTS}/); found {sorted(os.listdir(path))[:20]}")


def _np_dtype(dtype) -> np.dtype | None:
    if dtype is None:
        return None
    name = getattr(dtype, "__name__", None) or getattr(dtype, "name", None) or str(dtype)
    name = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}.get(name, name)
    if name not in DTYPES:
        raise ConversionError(f"dtype {dtype!r} is not one of {DTYPES}")
    return np.dtype(jax.numpy.dtype(name))


@dataclasses.dataclass
class Loaded:
    """A checkpoint read into our layout (host numpy arrays unless shardings were given)."""

    params: dict
    config: RobertaConfig
    task: str
    source_format: str
    tokenizer_dir: str | None = None
    vocab: list[str] | None = None
    dict_file: str | None = None
    extra_config: dict | None = None


def _extra_config(path: str) -> dict:
    """Keys of ours in a source config.json that the output's config.json keeps."""
    raw = hf.read_config(path)[1]
    return {k: raw[k] for k in hf.EXTRA_CONFIG_KEYS if k in raw}


def _new_head(config: RobertaConfig, task: str, dtype: np.dtype) -> dict:
    """Freshly initialised params from which a missing head is taken (fixed seed 0). One layer
    is enough: head shapes do not depend on depth."""
    from roberta_jax.model import init_params, make_model

    small = config.replace(num_hidden_layers=1, scan_layers=False, remat_policy="none")
    params = init_params(make_model(small, task), jax.random.key(0))
    return jax.tree.map(lambda x: np.asarray(x).astype(dtype), params)


def _from_state(state, config: RobertaConfig, task: str | None, src_task: str,
                allow_new_head: bool, keep_pooler: bool,
                cast: np.dtype | None) -> tuple[dict, str, RobertaConfig]:
    """HF-named state (a mapping, maybe lazy) -> (our params, task, config) for `task`
    (default: src_task)."""
    task = task or src_task
    if task not in mapping.HEAD_RULES:
        raise ConversionError(f"unknown task {task!r}; choose one of {list(mapping.HEAD_RULES)}")
    names = mapping.normalize_hf_keys(state.keys())
    pooler = keep_pooler and task == "base" and "roberta.pooler.dense.weight" in names
    new_head = None
    if allow_new_head and task != src_task:
        if task == "question-answering" and config.num_labels != 2:
            # A new span head has exactly two outputs (start, end) whatever the source said.
            print(f"question-answering head: num_labels {config.num_labels} -> 2 (start, end)")
            config = config.replace(num_labels=2, id2label_names=None)
        emb = names.get("roberta.embeddings.word_embeddings.weight")
        dtype = cast or (np.asarray(state[emb]).dtype if emb else np.dtype(np.float32))
        new_head = _new_head(config, task, dtype)
    params = mapping.hf_to_params(state, config, task, new_head=new_head, pooler=pooler)
    return params, task, config


def load(path: str | os.PathLike, *, task: str | None = None, dtype=None,
         allow_new_head: bool = False, step: int | None = None, keep_pooler: bool = True,
         shardings=None) -> Loaded:
    """Read any supported checkpoint into our params layout for `task` (default: its own)."""
    path = os.fspath(path)
    fmt = detect_format(path)
    cast = _np_dtype(dtype)
    if fmt == "hf":
        config, raw = hf.read_config(path)
        source = hf.open_weights(path, cast=cast)
        try:
            src_task = hf.task_of_architectures(raw.get("architectures")) or \
                mapping.infer_task(source.shapes)
            params, task, config = _from_state(source, config, task, src_task, allow_new_head,
                                               keep_pooler, cast)
        finally:
            source.close()
        return Loaded(params, config, task, fmt, tokenizer_dir=path, extra_config=_extra_config(path))
    if fmt == "fairseq":
        file = path if os.path.isfile(path) else os.path.join(path, "model.pt")
        state, config, vocab = fairseq.load_fairseq(file)
        if cast is not None:
            state = {k: v.astype(cast) for k, v in state.items()}
        src_task = mapping.infer_task({k: v.shape for k, v in state.items()})
        params, task, config = _from_state(state, config, task, src_task, allow_new_head,
                                           keep_pooler, cast)
        dict_file = os.path.join(os.path.dirname(os.path.abspath(file)), "dict.txt")
        if vocab is None:
            print(f"note: no dict.txt beside {file}; the vocabulary is not written out")
        return Loaded(params, config, task, fmt, vocab=vocab,
                      dict_file=dict_file if vocab is not None else None)
    if fmt == "jax":
        params, config, src_task = jax_dir.load_jax_dir(
            path, shardings=shardings if task in (None, _saved_task(path)) else None, dtype=cast)
        loaded = Loaded(params, config, src_task, fmt, tokenizer_dir=path,
                        extra_config=_extra_config(path))
    else:
        params, config = workdir.load_workdir_params(path, step, dtype=cast)
        loaded = Loaded(params, config, jax_dir.task_of_params(params), fmt)
    if task is not None and task != loaded.task:
        # Another task: go through the strict HF-named map, which drops or creates heads.
        state = mapping.params_to_hf(jax.tree.map(np.asarray, loaded.params), config, loaded.task)
        loaded.params, loaded.task, loaded.config = _from_state(
            state, config, task, loaded.task, allow_new_head, keep_pooler, cast)
    return loaded


def _saved_task(path: str) -> str:
    return jax_dir.read_config(path)[1]


def _write(loaded: Loaded, dst: str, to: str, *,
           max_shard_size: int = hf.DEFAULT_MAX_SHARD_SIZE) -> list[str]:
    extra = dict(loaded.extra_config or {})
    if loaded.vocab is not None:
        extra["roberta_jax_vocab"] = fairseq.VOCAB_NOTE
    if to == "hf":
        host = jax.tree.map(_to_host, loaded.params)
        state = mapping.params_to_hf(host, loaded.config, loaded.task)
        if jax.process_index() != 0:
            return []
        files = hf.save_hf(dst, state, loaded.config, loaded.task, tokenizer_dir=loaded.tokenizer_dir,
                           extra_config=extra, max_shard_size=max_shard_size)
    elif to == "jax":
        files = jax_dir.save_jax_dir(dst, loaded.params, loaded.config, loaded.task,
                                     tokenizer_dir=loaded.tokenizer_dir, extra_config=extra)
    else:
        raise ConversionError(f"unknown output format {to!r}; choose 'hf' or 'jax'")
    if loaded.vocab is not None and jax.process_index() == 0:
        files += fairseq.write_vocab(dst, loaded.vocab, loaded.dict_file)
    # Writers report bare names or full paths; callers get paths (all files sit in dst).
    return [os.path.join(dst, os.path.basename(f)) for f in files]


def _to_host(x) -> np.ndarray:
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        from jax.experimental import multihost_utils
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)


def _check_dst(src: str, dst: str) -> None:
    if os.path.abspath(src) == os.path.abspath(dst):
        raise ConversionError(f"source and destination are the same path {dst!r}")
    if os.path.exists(dst) and not os.path.isdir(dst):
        raise ConversionError(f"destination {dst!r} exists and is not a directory")


def convert(src, dst, *, to: str, task: str | None = None, dtype: str | None = None,
            allow_new_head: bool = False, step: int | None = None,
            max_shard_size: int = hf.DEFAULT_MAX_SHARD_SIZE) -> list[str]:
    """Convert checkpoint `src` (any supported format) into directory `dst` as "hf" or "jax".
    Returns the paths written."""
    src, dst = os.fspath(src), os.fspath(dst)
    if to not in ("hf", "jax"):
        raise ConversionError(f"unknown output format {to!r}; choose 'hf' or 'jax'")
    if max_shard_size <= 0:
        raise ConversionError(f"max shard size must be positive; got {max_shard_size} bytes")
    _check_dst(src, dst)
    if step is not None and detect_format(src) != "workdir":
        raise ConversionError(f"--step applies to pretraining workdirs; {src!r} is not one")
    loaded = load(src, task=task, dtype=dtype, allow_new_head=allow_new_head, step=step)
    files = _write(loaded, dst, to, max_shard_size=max_shard_size)
    n = sum(int(np.prod(np.shape(x))) for x in jax.tree_util.tree_leaves(loaded.params))
    print(f"converted {loaded.source_format} {src} -> {to} {dst} (task {loaded.task}, "
          f"{n / 1e6:.1f}M params): {', '.join(sorted(os.path.basename(f) for f in files))}")
    return files


# ------------------------------------------------------------------------- public API
def from_pretrained(path, task: str | None = None, dtype=None, *, param_dtype=None,
                    allow_new_head: bool = False, shardings=None, mesh=None, rules=None,
                    step: int | None = None):
    """(model, params) from an HF dir, a roberta_jax dir, a fairseq .pt or a workdir.

    task: default the checkpoint's own. dtype: the model's compute dtype (default float32);
    params keep the checkpoint's dtype unless param_dtype is given. Placement: `shardings`
    (one Sharding or a pytree matching params), or `mesh` (+ flax logical axis `rules`, else
    the active ones) to shard by the params' logical axes; default: the default device.
    """
    import jax.numpy as jnp

    from roberta_jax.model import make_model

    cast = _np_dtype(param_dtype)
    if mesh is not None and shardings is None:
        loaded_cfg, loaded_task = _peek(path, task)
        shardings = _logical_shardings(loaded_cfg, loaded_task, mesh, rules, cast)
    loaded = load(path, task=task, dtype=cast, allow_new_head=allow_new_head, step=step,
                  keep_pooler=False, shardings=shardings)
    leaf_dtype = jax.tree_util.tree_leaves(loaded.params)[0].dtype
    model = make_model(loaded.config, loaded.task, dtype=dtype or jnp.float32, param_dtype=leaf_dtype)
    params = jax.device_put(loaded.params, shardings) if shardings is not None else \
        jax.device_put(loaded.params)
    return model, params


def _peek(path, task: str | None) -> tuple[RobertaConfig, str]:
    """Config and task of a checkpoint without reading its weights (for sharding plans)."""
    fmt = detect_format(path)
    if fmt in ("hf", "jax"):
        config, raw = hf.read_config(os.fspath(path))
        return config, task or hf.task_of_architectures(raw.get("architectures")) or "masked-lm"
    if fmt == "workdir":
        return workdir.workdir_config(os.fspath(path)), task or "masked-lm"
    loaded = load(path, task=task)
    return loaded.config, loaded.task


def _logical_shardings(config: RobertaConfig, task: str, mesh, rules, cast):
    import flax.linen as nn

    from roberta_jax.model import init_boxed, make_model

    model = make_model(config, task, param_dtype=cast or np.float32)
    abstract = jax.eval_shape(lambda: init_boxed(model, jax.random.key(0)))
    specs = nn.get_partition_spec(abstract)
    return nn.logical_to_mesh_sharding(specs, mesh, rules)


def save_pretrained(out_dir, params, config: RobertaConfig, task: str | None = None,
                    format: str = "hf", tokenizer=None,
                    max_shard_size: int = hf.DEFAULT_MAX_SHARD_SIZE) -> list[str]:
    """Write params as an HF directory (format="hf": safetensors + config.json) or a roberta_jax
    directory ("jax": config.json + orbax params). tokenizer: a directory to copy tokenizer
    files from, or an object with save_pretrained (an HF tokenizer)."""
    import flax.linen as nn

    out_dir = os.fspath(out_dir)
    params = nn.unbox(params)  # also a fresh tree: writers may swap its leaves, never the caller's
    task = task or jax_dir.task_of_params(params)
    tokenizer_dir = tokenizer if isinstance(tokenizer, (str, os.PathLike)) else None
    loaded = Loaded(params, config, task, "memory", tokenizer_dir=tokenizer_dir)
    files = _write(loaded, out_dir, format, max_shard_size=max_shard_size)
    if tokenizer is not None and tokenizer_dir is None and jax.process_index() == 0:
        files += list(tokenizer.save_pretrained(out_dir))
    return files


__all__ = ["convert", "detect_format", "from_pretrained", "save_pretrained", "load",
           "load_workdir_params", "FORMATS"]
