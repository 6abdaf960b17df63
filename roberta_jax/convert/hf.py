"""Read and write Hugging Face RoBERTa directories.

Reading is lazy: `open_weights` returns a mapping whose values are loaded one tensor at a
time (safetensors `safe_open` per key, or a memory-mapped `torch.load(weights_only=True)`),
so a conversion never holds two full copies of the checkpoint. Writing uses safetensors,
sharded with an index above `max_shard_size`, as transformers' save_pretrained does.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable, Iterator, Mapping

import numpy as np
from tqdm.auto import tqdm

from roberta_jax.config import RobertaConfig
from roberta_jax.convert import mapping
from roberta_jax.errors import ConfigError, ConversionError
from roberta_jax.files import write_text_atomic

SAFE_WEIGHTS = "model.safetensors"
SAFE_INDEX = "model.safetensors.index.json"
TORCH_WEIGHTS = "pytorch_model.bin"
TORCH_INDEX = "pytorch_model.bin.index.json"
WEIGHT_FILES = (SAFE_WEIGHTS, SAFE_INDEX, TORCH_WEIGHTS, TORCH_INDEX)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt",
                   "special_tokens_map.json", "added_tokens.json", "dict.txt",
                   "vocab_fairseq.txt")
# config.json keys of ours beyond RobertaConfig's that a conversion carries along.
EXTRA_CONFIG_KEYS = ("roberta_jax_vocab",)
DEFAULT_MAX_SHARD_SIZE = 5 * 10**9  # transformers' default "5GB"
# Architecture suffix -> task; covers RobertaFor* and XLMRobertaFor*.
_ARCH_SUFFIX_TASK = [("ForMaskedLM", "masked-lm"), ("ForCausalLM", "masked-lm"),
                     ("ForSequenceClassification", "sequence-classification"),
                     ("ForTokenClassification", "token-classification"),
                     ("ForQuestionAnswering", "question-answering"),
                     ("ForMultipleChoice", "multiple-choice"), ("Model", "base")]


def weight_files(path: str) -> list[str]:
    """The weight files (or index) present in an HF directory, in order of preference."""
    return [f for f in WEIGHT_FILES if os.path.isfile(os.path.join(path, f))]


# ------------------------------------------------------------------------------ config
def read_json(file: str, *, missing: str):
    """A JSON file's value; ConversionError `missing` if absent, or naming the parse error."""
    try:
        with open(file) as f:
            return json.load(f)
    except FileNotFoundError:
        raise ConversionError(missing) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConversionError(f"{file} is not valid JSON: {e}") from None


def read_config(path: str) -> tuple[RobertaConfig, dict]:
    """(RobertaConfig, raw config.json dict) of an HF directory; refuses non-RoBERTa models."""
    file = os.path.join(path, "config.json")
    raw = read_json(file, missing=f"{path!r} has no config.json")
    if not isinstance(raw, dict):
        raise ConversionError(f"{file} holds a JSON {type(raw).__name__}, not an object of config fields")
    model_type = raw.get("model_type")
    if model_type not in ("roberta", "xlm-roberta"):
        raise ConversionError(f"{path!r} holds a model_type={model_type!r} checkpoint; roberta_jax "
                              f"converts only RoBERTa models (model_type 'roberta')")
    try:
        return RobertaConfig.from_hf_dict(raw), raw
    except ConfigError as e:
        raise ConversionError(f"{file}: {e}") from None


def task_of_architectures(architectures: list[str] | None) -> str | None:
    for arch in architectures or ():
        if arch in mapping.TASK_OF_ARCHITECTURE:
            return mapping.TASK_OF_ARCHITECTURE[arch]
        for suffix, task in _ARCH_SUFFIX_TASK:
            if arch.endswith(suffix):
                return task
        raise ConversionError(f"architecture {arch!r} in config.json is not a RoBERTa "
                              f"architecture roberta_jax knows ({sorted(mapping.TASK_OF_ARCHITECTURE)})")
    return None


def write_config(out_dir: str, config: RobertaConfig, task: str, *, extra: dict | None = None,
                 dtype: str | None = None) -> str:
    """config.json that transformers reads: RobertaConfig.to_hf_dict plus `extra` keys."""
    d = config.to_hf_dict([mapping.HF_ARCHITECTURES[task]])
    if dtype is not None:
        d["dtype"] = dtype  # transformers 5's name for the weights' dtype
    d.update(extra or {})
    return write_json(os.path.join(out_dir, "config.json"), d)


def write_json(file: str, obj) -> str:
    return write_text_atomic(file, json.dumps(obj, indent=2, sort_keys=True) + "\n")


# ------------------------------------------------------------------------------ reading
class TensorSource(Mapping):
    """name -> np.ndarray, each tensor read from disk on access (and optionally cast).

    `shapes` is known without reading any data; a tqdm bar counts tensors read.
    """

    def __init__(self, shapes: dict[str, tuple[int, ...]], get: Callable[[str], np.ndarray],
                 cast: np.dtype | None = None, desc: str = "reading"):
        self.shapes, self._get, self.cast = shapes, get, cast
        self.dtypes: dict[str, str] = {}
        self._bar = tqdm(total=len(shapes), desc=desc, unit="tensor", delay=2, leave=False)

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in self.shapes:
            raise KeyError(name)
        x = self._get(name)
        self._bar.update(1)
        return x if self.cast is None or x.dtype == self.cast else x.astype(self.cast)

    def __iter__(self) -> Iterator[str]:
        return iter(self.shapes)

    def __len__(self) -> int:
        return len(self.shapes)

    def close(self) -> None:
        self._bar.close()


def _safetensors_source(files: list[str]) -> tuple[dict, Callable]:
    from safetensors import safe_open

    owner, shapes = {}, {}
    for file in files:
        try:
            h = safe_open(file, framework="np")
            for k in h.keys():
                owner[k] = (h, file)
                shapes[k] = tuple(h.get_slice(k).get_shape())
        except Exception as e:  # SafetensorError and friends: a truncated or foreign file
            raise ConversionError(f"{file!r} is not a readable safetensors file: {_first_line(e)}") from None

    def get(k: str) -> np.ndarray:
        h, file = owner[k]
        try:
            return h.get_tensor(k)
        except Exception as e:
            raise ConversionError(f"cannot read tensor {k!r} from {file!r}: {_first_line(e)}") from None

    return shapes, get


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return (text.splitlines()[0] if text else type(e).__name__)[:300]


def torch_to_numpy(t) -> np.ndarray:
    """A CPU torch tensor as numpy without changing bits (bf16 via ml_dtypes)."""
    import torch

    t = t.detach()
    if t.dtype == torch.bfloat16:
        import ml_dtypes
        return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return t.numpy()


def torch_load(file: str, allowed_globals: tuple = ()) -> dict:
    """torch.load restricted to tensors and plain containers (plus `allowed_globals`);
    memory-mapped when the file format allows it. Anything else is a ConversionError."""
    import pickle
    import zipfile

    import torch

    mmap = zipfile.is_zipfile(file)  # only the zip format (torch >= 1.6) can be mmapped
    try:
        with torch.serialization.safe_globals(list(allowed_globals)):
            return torch.load(file, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        raise ConversionError(f"refusing to load {file!r}: it is not a plain tensor checkpoint "
                              f"(torch.load(weights_only=True) said: {_first_line(e)})") from None
    except MemoryError:
        raise
    except Exception as e:  # truncated zip, junk bytes, ...: torch raises many types
        raise ConversionError(f"cannot read {file!r} as a PyTorch checkpoint (torch.load said: "
                              f"{type(e).__name__}: {_first_line(e)})") from None


def _torch_source(files: list[str]) -> tuple[dict, Callable]:
    tensors: dict = {}
    for file in files:
        sd = torch_load(file)
        if not isinstance(sd, Mapping):
            raise ConversionError(f"{file!r} holds a {type(sd).__name__}, not a state_dict")
        tensors.update(sd)
    shapes = {k: tuple(v.shape) for k, v in tensors.items()}
    return shapes, lambda k: torch_to_numpy(tensors[k])


def open_weights(path: str, cast: np.dtype | None = None) -> TensorSource:
    """Lazy view of the weights of an HF directory: safetensors (single or sharded) preferred,
    else pytorch_model.bin (single or sharded)."""
    present = weight_files(path)
    if not present:
        raise ConversionError(f"{path!r} has no weights (looked for {list(WEIGHT_FILES)}); "
                              f"found {sorted(os.listdir(path))}")
    first = present[0]
    if first.endswith(".index.json"):
        shard_names = _shard_names(os.path.join(path, first))
        files = [os.path.join(path, s) for s in shard_names]
        missing = [s for s in files if not os.path.isfile(s)]
        if missing:
            raise ConversionError(f"{first} in {path!r} names shards that are missing: {missing}")
    else:
        files = [os.path.join(path, first)]
    make = _safetensors_source if first.startswith("model.safetensors") else _torch_source
    shapes, get = make(files)
    return TensorSource(shapes, get, cast, desc=f"reading {os.path.basename(path) or path}")


def _shard_names(index_file: str) -> list[str]:
    """The shard files an index.json's weight_map names."""
    try:
        with open(index_file) as f:
            weight_map = json.load(f)["weight_map"]
        return sorted({str(v) for v in weight_map.values()})
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConversionError(f"{index_file} is not valid JSON: {e}") from None
    except (KeyError, TypeError, AttributeError):
        raise ConversionError(f"{index_file} has no 'weight_map' object (name -> shard file)") from None


# ------------------------------------------------------------------------------ writing
def write_weights(out_dir: str, state: Mapping[str, np.ndarray],
                  max_shard_size: int = DEFAULT_MAX_SHARD_SIZE) -> list[str]:
    """Write `state` as model.safetensors, or as model-0000i-of-0000n.safetensors shards plus
    model.safetensors.index.json when it exceeds `max_shard_size` bytes. Stale weight files
    from an earlier save in out_dir are removed. Returns the files written."""
    from safetensors.numpy import save_file

    shards: list[dict[str, np.ndarray]] = [{}]
    size = 0
    for name, x in state.items():
        if shards[-1] and size + x.nbytes > max_shard_size:
            shards.append({})
            size = 0
        shards[-1][name] = x
        size += x.nbytes
    n = len(shards)
    names = [SAFE_WEIGHTS] if n == 1 else [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
    total = sum(x.nbytes for x in state.values())
    with tqdm(total=total, desc="writing safetensors", unit="B", unit_scale=True, delay=2,
              leave=False) as bar:
        for name, shard in zip(names, shards):
            file = os.path.join(out_dir, name)
            save_file(shard, f"{file}.tmp{os.getpid()}", metadata={"format": "pt"})
            os.replace(f"{file}.tmp{os.getpid()}", file)
            bar.update(sum(x.nbytes for x in shard.values()))
    written = list(names)
    if n > 1:
        index = {"metadata": {"total_size": total},
                 "weight_map": {k: names[i] for i, s in enumerate(shards) for k in s}}
        written.append(write_json(os.path.join(out_dir, SAFE_INDEX), index))
    _remove_stale(out_dir, keep=set(names) | ({SAFE_INDEX} if n > 1 else set()))
    return written


def _remove_stale(out_dir: str, keep: set[str]) -> None:
    pattern = re.compile(r"^(model|pytorch_model)(-\d{5}-of-\d{5})?\.(safetensors|bin)(\.index\.json)?$")
    for f in os.listdir(out_dir):
        if pattern.match(f) and f not in keep:
            os.remove(os.path.join(out_dir, f))


def copy_tokenizer(src_dir: str | None, out_dir: str) -> list[str]:
    """Copy the tokenizer files that `src_dir` has into out_dir (atomically, each)."""
    if not src_dir or not os.path.isdir(src_dir) or os.path.abspath(src_dir) == os.path.abspath(out_dir):
        return []
    copied = []
    for name in TOKENIZER_FILES:
        src = os.path.join(src_dir, name)
        if os.path.isfile(src):
            dst = os.path.join(out_dir, name)
            shutil.copyfile(src, f"{dst}.tmp{os.getpid()}")
            os.replace(f"{dst}.tmp{os.getpid()}", dst)
            copied.append(name)
    return copied


def save_hf(out_dir: str, state: Mapping[str, np.ndarray], config: RobertaConfig, task: str, *,
            tokenizer_dir: str | None = None, extra_config: dict | None = None,
            max_shard_size: int = DEFAULT_MAX_SHARD_SIZE) -> list[str]:
    """A directory that transformers' AutoModelFor<task>.from_pretrained loads."""
    os.makedirs(out_dir, exist_ok=True)
    # config.json is the completion marker: removed first and written last, so an interrupted
    # save (over an earlier one, too) never leaves weights that look loadable.
    remove_config(out_dir)
    dtypes = {str(x.dtype) for x in state.values()}
    files = write_weights(out_dir, state, max_shard_size)
    files += copy_tokenizer(tokenizer_dir, out_dir)
    files.append(write_config(out_dir, config, task, extra=extra_config,
                              dtype=dtypes.pop() if len(dtypes) == 1 else None))
    return files


def remove_config(out_dir: str) -> None:
    try:
        os.remove(os.path.join(out_dir, "config.json"))
    except FileNotFoundError:
        pass
