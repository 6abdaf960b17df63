"""`roberta-jax` command line. Parses arguments and calls one library function per command;
no logic lives here. Errors a user can cause are printed as one line with exit status 2."""

from __future__ import annotations

import argparse
import sys

from roberta_jax.errors import UserError

TASKS = ("base", "masked-lm", "sequence-classification", "token-classification",
         "question-answering", "multiple-choice")


# ----------------------------------------------------------------------------- convert
def _add_convert(sub):
    p = sub.add_parser("convert", help="convert checkpoints between HF/fairseq PyTorch and roberta_jax")
    p.add_argument("src", help="HF dir, roberta_jax dir, fairseq .pt, or a pretraining workdir")
    p.add_argument("dst", help="output directory")
    p.add_argument("--to", choices=("hf", "jax"), required=True)
    p.add_argument("--task", choices=TASKS, default=None, help="default: inferred from the source")
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default=None,
                   help="cast weights on the way (default: keep the source's dtype)")
    p.add_argument("--allow-new-head", action="store_true",
                   help="initialise a task head the source lacks (and say which keys were created)")
    p.add_argument("--step", type=int, default=None, help="checkpoint step of a pretraining workdir")
    p.add_argument("--max-shard-size-gb", type=float, default=5.0,
                   help="HF output: split model.safetensors into shards of at most this size "
                        "(default 5, like transformers)")
    p.set_defaults(func=_run_convert)


def _run_convert(args):
    from roberta_jax.convert import convert
    convert(args.src, args.dst, to=args.to, task=args.task, dtype=args.dtype,
            allow_new_head=args.allow_new_head, step=args.step,
            max_shard_size=int(args.max_shard_size_gb * 1e9))


# --------------------------------------------------------------------------- tokenizer
def _add_tokenizer(sub):
    p = sub.add_parser("tokenizer", help="byte-level BPE tokenizer tools")
    tsub = p.add_subparsers(dest="tokenizer_cmd", required=True)
    t = tsub.add_parser("train", help="train a RoBERTa byte-level BPE tokenizer")
    t.add_argument("sources", nargs="+", help="text files/globs, *.jsonl, hf:NAME, tfds:NAME, or 'default'")
    t.add_argument("--out", required=True)
    t.add_argument("--vocab-size", type=int, required=True)
    t.add_argument("--min-frequency", type=int, default=2)
    t.set_defaults(func=_run_tokenizer_train)


def _run_tokenizer_train(args):
    from roberta_jax.data.tokenizer import train_tokenizer
    train_tokenizer(args.sources, args.out, vocab_size=args.vocab_size,
                    min_frequency=args.min_frequency)


# ----------------------------------------------------------------------------- prepare
def _add_prepare(sub):
    p = sub.add_parser("prepare", help="tokenize and pack sources into fixed-length blocks")
    p.add_argument("sources", nargs="+", help="text files/globs, *.jsonl, hf:NAME, tfds:NAME, or 'default'")
    p.add_argument("--tokenizer", required=True)
    p.add_argument("--seq-len", type=int, required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--mode", choices=("full-sentences", "doc-sentences"), default="full-sentences")
    p.add_argument("--doc-split", choices=("file", "blank-line"), default="file")
    p.add_argument("--text-field", default="text")
    p.add_argument("--validation-fraction", type=float, default=0.01)
    p.add_argument("--drop-last", action="store_true", help="drop the final partial block instead of padding it")
    p.add_argument("--num-workers", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_run_prepare)


def _run_prepare(args):
    from roberta_jax.data.prepare import prepare
    prepare(args.sources, args.out, tokenizer=args.tokenizer, seq_len=args.seq_len,
            mode=args.mode, doc_split=args.doc_split, text_field=args.text_field,
            validation_fraction=args.validation_fraction, drop_last=args.drop_last,
            num_workers=args.num_workers, seed=args.seed)


# ---------------------------------------------------------------------------- pretrain
def _add_pretrain(sub):
    p = sub.add_parser("pretrain", help="pretrain RoBERTa (MLM) from an experiment config")
    p.add_argument("--config", required=True, help="configs/NAME.py[:ARG]; override with --config.KEY=VALUE")
    p.add_argument("--workdir", required=True)
    p.add_argument("--coordinator_address", default=None)
    p.add_argument("--num_processes", type=int, default=None)
    p.add_argument("--process_id", type=int, default=None)
    p.set_defaults(func=_run_pretrain)


def _run_pretrain(args, overrides):
    from roberta_jax.train import pretrain_from_cli
    pretrain_from_cli(args.config, overrides, args.workdir,
                      coordinator_address=args.coordinator_address,
                      num_processes=args.num_processes, process_id=args.process_id)


# --------------------------------------------------------------------------- fill-mask
def _add_fill_mask(sub):
    p = sub.add_parser("fill-mask", help="predict <mask> tokens with a masked-lm model")
    p.add_argument("model", help="model dir (HF, roberta_jax) or fairseq .pt")
    p.add_argument("texts", nargs="+", help="sentences containing <mask>")
    p.add_argument("--tokenizer", default=None, help="default: the model dir")
    p.add_argument("--top-k", type=int, default=5)
    p.set_defaults(func=_run_fill_mask)


def _run_fill_mask(args):
    from roberta_jax.inference import fill_mask_cli
    fill_mask_cli(args.model, args.texts, tokenizer=args.tokenizer, top_k=args.top_k)


# -------------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="roberta-jax", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_add_convert, _add_tokenizer, _add_prepare, _add_pretrain, _add_fill_mask):
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # ml_collections-style overrides (--config.KEY=VALUE) are passed through to the command.
    overrides = [a for a in argv if a.startswith("--config.")]
    argv = [a for a in argv if not a.startswith("--config.")]
    args = build_parser().parse_args(argv)
    try:
        if args.func is _run_pretrain:
            args.func(args, overrides)
        else:
            args.func(args)
    except UserError as e:
        print(f"roberta-jax {args.command}: error: {e}", file=sys.stderr)
        return 2
    except FileNotFoundError as e:
        print(f"roberta-jax {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"roberta-jax {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
