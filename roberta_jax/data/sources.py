"""Documents from SOURCES: text files/globs, *.jsonl, `hf:NAME[:CONFIG][:SPLIT]`,
`datasets.save_to_disk` dirs, `tfds:NAME[:SPLIT]`, and `default`/`austen` (the embedded corpus).

Every source yields documents (str) in a deterministic order. Undecodable bytes are replaced
with U+FFFD and counted in `SourceStats`, not fatal: web text often has a few bad bytes.
"""

from __future__ import annotations

import codecs
import dataclasses
import glob
import importlib.resources
import json
import lzma
import os
import pathlib
import re
from collections.abc import Iterable, Iterator

from roberta_jax.errors import DataError

DEFAULT_NAMES = ("default", "austen")
# Chapter headings of the embedded Austen novels ("CHAPTER IV", "Chapter 12").
_CHAPTER_RE = re.compile(r"^[ \t]*chapter[ \t]+[0-9ivxlc]+\.?[ \t]*$", re.IGNORECASE | re.MULTILINE)
_BLANK_LINE_RE = re.compile(r"\n[ \t]*\n")


@dataclasses.dataclass
class SourceStats:
    """Counts of what reading the sources replaced or skipped."""

    undecodable_bytes: int = 0
    empty_documents: int = 0


def _decode(data: bytes, stats: SourceStats) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        count = 0

        def handler(err: UnicodeDecodeError) -> tuple[str, int]:
            nonlocal count
            count += err.end - err.start
            return "\ufffd", err.end

        # A private error-handler name per call keeps the count local to this decode.
        name = f"roberta_jax_count_{id(handler)}"
        codecs.register_error(name, handler)
        text = data.decode("utf-8", errors=name)
        stats.undecodable_bytes += count
        return text


def _split_text(text: str, doc_split: str) -> list[str]:
    if doc_split == "file":
        return [text]
    if doc_split == "blank-line":
        return _BLANK_LINE_RE.split(text)
    if doc_split == "chapter":
        parts = _CHAPTER_RE.split(text)
        # The front matter (title, author) belongs with the first chapter.
        return [parts[0] + parts[1]] + parts[2:] if len(parts) > 1 else parts
    raise DataError(f"unknown doc_split {doc_split!r}; expected 'file' or 'blank-line'")


def default_corpus_files() -> list[importlib.resources.abc.Traversable]:
    """The embedded Austen novels (xz-compressed text), sorted by name."""
    root = importlib.resources.files("roberta_jax.data") / "corpus"
    return sorted((p for p in root.iterdir() if p.name.endswith(".txt.xz")), key=lambda p: p.name)


# A newline inside a paragraph: the novels' text is hard-wrapped at ~70 columns.
_WRAP_RE = re.compile(r"(?<=\S)[ \t]*\n[ \t]*(?=\S)")


def _default_docs(stats: SourceStats) -> Iterator[str]:
    # One document per chapter (269 in all) so a by-document validation split is meaningful.
    # Paragraphs are unwrapped into single lines (blank lines between them stay): otherwise
    # every ~12th token is a line-break that a model spends its capacity predicting.
    for path in default_corpus_files():
        text = _WRAP_RE.sub(" ", _decode(lzma.decompress(path.read_bytes()), stats))
        yield from _split_text(text, "chapter")


def _hf_docs(spec: str, text_field: str) -> Iterator[str]:
    import datasets

    name, config, split = (spec.split(":") + [None, None])[:3]
    try:
        ds = datasets.load_dataset(name, config or None, split=split or "train")
    except Exception as e:  # hub/network/format errors all mean "this source is unusable"
        raise DataError(f"cannot load hf:{spec}: {type(e).__name__}: {e}") from e
    yield from _records(ds, text_field, f"hf:{spec}")


def _disk_docs(path: str, text_field: str) -> Iterator[str]:
    import datasets

    ds = datasets.load_from_disk(path)
    if isinstance(ds, datasets.DatasetDict):
        if "train" not in ds and len(ds) != 1:
            raise DataError(f"{path} holds splits {sorted(ds)}; expected 'train' or a single split")
        ds = ds["train"] if "train" in ds else next(iter(ds.values()))
    yield from _records(ds, text_field, path)


def _tfds_docs(spec: str, text_field: str, stats: SourceStats) -> Iterator[str]:
    try:
        import tensorflow_datasets as tfds
    except ImportError as e:
        raise DataError(f"tfds:{spec} needs tensorflow-datasets and array-record "
                        f"(pip install tensorflow-datasets array-record)") from e

    name, split = (spec.split(":") + [None])[:2]
    data_dir = os.environ.get("TFDS_DATA_DIR")  # read here: tfds reads it only at import
    try:
        source = tfds.data_source(name, split=split or "train", data_dir=data_dir)
    except Exception as e:
        # tfds's messages run to hundreds of lines (every dataset it knows); keep the first.
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise DataError(f"cannot open tfds:{spec} (an array_record copy under "
                        f"{data_dir or '~/tensorflow_datasets'}, see TFDS_DATA_DIR): "
                        f"{reason}") from e
    for i in range(len(source)):
        record = source[i]
        if text_field not in record:
            raise DataError(f"tfds:{spec} record {i} has no field {text_field!r} "
                            f"(fields: {sorted(record)})")
        value = record[text_field]
        yield _decode(value, stats) if isinstance(value, bytes) else str(value)


def _records(ds: Iterable[dict], text_field: str, where: str) -> Iterator[str]:
    for i, rec in enumerate(ds):
        if text_field not in rec:
            raise DataError(f"{where} record {i} has no field {text_field!r} (fields: {sorted(rec)})")
        yield rec[text_field]


def _jsonl_docs(path: str, text_field: str, stats: SourceStats) -> Iterator[str]:
    with open(path, "rb") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(_decode(line, stats))
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{n}: invalid JSON ({e.msg})") from e
            if not isinstance(rec, dict) or text_field not in rec:
                raise DataError(f"{path}:{n}: no field {text_field!r}")
            yield rec[text_field]


def _expand_paths(source: str) -> list[str]:
    if os.path.isdir(source):
        paths = sorted(p for p in glob.glob(os.path.join(source, "**", "*"), recursive=True)
                       if os.path.isfile(p))
    else:
        paths = sorted(glob.glob(source)) if glob.has_magic(source) else [source]
    if not paths:
        raise DataError(f"source {source!r} matches no files")
    for p in paths:
        if not os.path.isfile(p):
            raise DataError(f"source {p!r} does not exist")
    return paths


def iter_documents(sources: Iterable[str], stats: SourceStats, *, doc_split: str = "file",
                   text_field: str = "text") -> Iterator[str]:
    """Yield the stripped, non-empty documents of all sources in order; count the rest."""
    sources = list(sources)
    if doc_split not in ("file", "blank-line"):
        raise DataError(f"unknown doc_split {doc_split!r}; expected 'file' or 'blank-line'")
    if not sources:
        raise DataError("no sources given")
    for source in sources:
        if source in DEFAULT_NAMES:
            docs: Iterable[str] = _default_docs(stats)
        elif source.startswith("hf:"):
            docs = _hf_docs(source[3:], text_field)
        elif source.startswith("tfds:"):
            docs = _tfds_docs(source[5:], text_field, stats)
        elif any(os.path.exists(os.path.join(source, f))
                 for f in ("dataset_info.json", "dataset_dict.json")):
            docs = _disk_docs(source, text_field)
        else:
            docs = (d for p in _expand_paths(source) for d in (
                _jsonl_docs(p, text_field, stats) if p.endswith(".jsonl")
                else _split_text(_decode(pathlib.Path(p).read_bytes(), stats), doc_split)))
        for doc in docs:
            doc = doc.strip()
            if doc:
                yield doc
            else:
                stats.empty_documents += 1
