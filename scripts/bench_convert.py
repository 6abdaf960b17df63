"""Benchmark checkpoint conversion speed and peak memory on a roberta-large-shaped model.

    .venv/bin/python scripts/bench_convert.py [--workdir /tmp/rj_bench] [--preset large]

Creates a RobertaForMaskedLM with random weights (355M parameters for "large") saved by
transformers, then times `roberta-jax convert` HF -> jax and jax -> HF, each in a fresh
subprocess whose peak resident memory is read with getrusage(RUSAGE_CHILDREN) by a one-shot
launcher process (so no other child's peak is mixed in). Finally checks that the round trip
reproduced every tensor bit for bit. Targets (issue #3): each direction <= 60 s on 2 CPU cores,
peak RSS <= 3x the checkpoint's size. Prints one JSON line per measurement and a summary.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def measure(cmd: list[str]) -> dict:
    """Run cmd in a launcher process that reports its child's wall time and peak RSS."""
    launcher = (
        "import json, resource, subprocess, sys, time\n"
        "t = time.perf_counter()\n"
        "rc = subprocess.call(sys.argv[1:])\n"
        "wall = time.perf_counter() - t\n"
        "peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024\n"
        "print(json.dumps({'rc': rc, 'wall_s': wall, 'peak_rss_bytes': peak}))\n")
    out = subprocess.run([sys.executable, "-c", launcher, *cmd], capture_output=True, text=True,
                         env={**os.environ, "JAX_PLATFORMS": "cpu"})
    if out.returncode:
        sys.exit(f"launcher failed: {out.stderr[-2000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    if result["rc"]:
        sys.exit(f"{' '.join(cmd)} failed:\n{out.stderr[-3000:]}")
    return result


def make_checkpoint(path: str, preset: str) -> None:
    """Random weights in transformers' own save format (safetensors, float32)."""
    if os.path.isfile(os.path.join(path, "model.safetensors")):
        return
    code = (
        "import sys, torch, transformers\n"
        "from roberta_jax.config import RobertaConfig\n"
        "cfg = RobertaConfig.preset(sys.argv[2])\n"
        "hc = transformers.RobertaConfig(**cfg.to_hf_dict(['RobertaForMaskedLM']))\n"
        "torch.manual_seed(0)\n"
        "transformers.RobertaForMaskedLM(hc).save_pretrained(sys.argv[1])\n")
    subprocess.run([sys.executable, "-c", code, path, preset], check=True, cwd=ROOT)


def same_tensors(a_dir: str, b_dir: str) -> bool:
    """Every tensor equal in name, dtype, shape and bits (read one at a time)."""
    import numpy as np
    from safetensors import safe_open

    with safe_open(os.path.join(a_dir, "model.safetensors"), "np") as a, \
            safe_open(os.path.join(b_dir, "model.safetensors"), "np") as b:
        if sorted(a.keys()) != sorted(b.keys()):
            return False
        for k in a.keys():
            x, y = a.get_tensor(k), b.get_tensor(k)
            if x.dtype != y.dtype or x.shape != y.shape or not np.array_equal(x.view(np.uint8), y.view(np.uint8)):
                return False
    return True


def versions() -> dict:
    import importlib.metadata as md
    return {p: md.version(p) for p in ("jax", "orbax-checkpoint", "safetensors", "torch",
                                        "transformers", "numpy")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="/tmp/rj_bench")
    parser.add_argument("--preset", default="large")
    args = parser.parse_args()
    hf_dir, jax_dir, back_dir = (os.path.join(args.workdir, d) for d in ("hf", "jax", "hf_back"))
    os.makedirs(args.workdir, exist_ok=True)
    make_checkpoint(hf_dir, args.preset)
    size = os.path.getsize(os.path.join(hf_dir, "model.safetensors"))
    convert = [sys.executable, "-m", "roberta_jax", "convert"]
    results = {}
    for name, cmd in (("hf_to_jax", convert + [hf_dir, jax_dir, "--to", "jax"]),
                      ("jax_to_hf", convert + [jax_dir, back_dir, "--to", "hf"])):
        r = measure(cmd)
        r["peak_rss_over_checkpoint"] = r["peak_rss_bytes"] / size
        results[name] = r
        print(json.dumps({"step": name, **r}))
    summary = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores",
        "load_average_1min": os.getloadavg()[0],
        "preset": args.preset, "checkpoint_bytes": size,
        "round_trip_bit_exact": same_tensors(hf_dir, back_dir),
        **{f"{k}_wall_s": round(v["wall_s"], 1) for k, v in results.items()},
        **{f"{k}_peak_rss_x": round(v["peak_rss_over_checkpoint"], 2) for k, v in results.items()},
        "versions": versions(),
    }
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
