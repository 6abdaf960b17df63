"""Input pipeline: tokenizer, prepared (packed) blocks on disk, grain loader.

Heavy modules (tokenizers, transformers, grain) are imported by their submodules only.
"""

from roberta_jax.data.prepared import (
    check_max_positions,
    check_tokenizer,
    load_prepared,
    read_metadata,
)

__all__ = ["check_max_positions", "check_tokenizer", "load_prepared", "read_metadata"]
