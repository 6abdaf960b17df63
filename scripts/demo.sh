#!/usr/bin/env bash
# The pretraining demo, end to end on this machine (CPU, or a GPU if JAX finds one):
# train a byte-level BPE tokenizer on the shipped Jane Austen corpus, pack it into 128-token
# blocks, pretrain configs/tiny.py (printing held-out MLM accuracy as it rises), export the
# result as a Hugging Face model and fill some masks with it. Everything lands in ./demo_out
# (gitignored; removed and rebuilt on every run). Extra arguments go to `pretrain`, e.g.
#   bash scripts/demo.sh --config.steps=200
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/setup_venv.sh"
cd "$root"
py="$root/.venv/bin/python"
out="$root/demo_out"
start=$(date +%s)
rm -rf "$out"
mkdir -p "$out"

echo "== 1. tokenizer (8192 ids) on the shipped corpus"
"$py" -m roberta_jax tokenizer train default --out "$out/tokenizer" --vocab-size 8192

echo "== 2. prepare: 128-token blocks, 5% of the books' chapters held out"
"$py" -m roberta_jax prepare default --tokenizer "$out/tokenizer" --seq-len 128 \
  --validation-fraction 0.05 --out "$out/data"

echo "== 3. pretrain configs/tiny.py"
"$py" -m roberta_jax pretrain --config configs/tiny.py --workdir "$out/workdir" \
  --config.data.path="$out/data" --config.data.tokenizer="$out/tokenizer" "$@" \
  2>&1 | grep --line-buffered -v -e "^WARNING" -e "absl"

echo "== held-out evaluation (from $out/workdir/metrics.jsonl)"
"$py" - "$out/workdir/metrics.jsonl" <<'PY'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
for r in rows:
    if "eval_loss" in r:
        print(f"step {r['step']:>5}: eval loss {r['eval_loss']:.3f}  perplexity "
              f"{r['eval_perplexity']:8.1f}  MLM accuracy {r['eval_mlm_accuracy']:.3f}")
train = [r for r in rows if "tokens_per_sec" in r and r["step"] > rows[0]["step"]]
if train:
    print(f"median training throughput: {sorted(r['tokens_per_sec'] for r in train)[len(train) // 2]:,.0f} tokens/s")
PY

echo "== 4. export to Hugging Face format"
"$py" -m roberta_jax convert "$out/workdir" "$out/hf" --to hf
cp "$out/tokenizer"/* "$out/hf/"

echo "== 5. fill-mask with the exported model"
"$py" -m roberta_jax fill-mask "$out/hf" --top-k 3 \
  "It is a truth universally acknowledged, that a single man in possession of a good fortune, must be in want of a <mask>." \
  "Mr. Darcy looked at <mask> with surprise." \
  "She was not <mask> to be pleased." \
  "The <mask> was very fine, and they walked to the village."

echo "== demo finished in $(( $(date +%s) - start )) s; outputs in $out (plot: $out/workdir/metrics.png)"
