#!/usr/bin/env python
"""Start N local JAX processes on loopback, as a pod would: for testing multi-host code.

    python scripts/launch_local.py -n 2 --devices-per-process 4 -- \
        roberta-jax pretrain --config configs/tiny.py --workdir /tmp/wd

Each process gets `--coordinator_address 127.0.0.1:PORT --num_processes N --process_id I`
appended (a free port is picked), JAX_PLATFORMS=cpu and, with --devices-per-process K,
XLA_FLAGS=--xla_force_host_platform_device_count=K. Output lines are prefixed `[pI]`. The
exit status is the first non-zero one; when a process fails the others are stopped (they
would otherwise wait for it at the next collective).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stream(proc: subprocess.Popen, prefix: str, lock: threading.Lock) -> None:
    for line in iter(proc.stdout.readline, ""):
        with lock:
            sys.stdout.write(f"{prefix} {line}")
            sys.stdout.flush()


def _environment(devices_per_process: int | None) -> dict[str, str]:
    env = dict(os.environ)
    if devices_per_process:
        env["JAX_PLATFORMS"] = "cpu"
        flags = [f for f in env.get("XLA_FLAGS", "").split()
                 if not f.startswith("--xla_force_host_platform_device_count")]
        env["XLA_FLAGS"] = " ".join(
            flags + [f"--xla_force_host_platform_device_count={devices_per_process}"])
    env["PYTHONUNBUFFERED"] = "1"
    return env


def launch(command: list[str], num_processes: int, devices_per_process: int | None = None,
           timeout: float | None = None) -> int:
    if command and shutil.which(command[0]) is None and os.path.exists(
            os.path.join(os.path.dirname(sys.executable), command[0])):
        command = [os.path.join(os.path.dirname(sys.executable), command[0]), *command[1:]]
    address = f"127.0.0.1:{free_port()}"
    env = _environment(devices_per_process)
    lock = threading.Lock()
    procs, threads = [], []
    for i in range(num_processes):
        argv = command + ["--coordinator_address", address, "--num_processes",
                          str(num_processes), "--process_id", str(i)]
        proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, bufsize=1, start_new_session=True)
        thread = threading.Thread(target=_stream, args=(proc, f"[p{i}]", lock), daemon=True)
        thread.start()
        procs.append(proc)
        threads.append(thread)

    deadline = None if timeout is None else time.monotonic() + timeout
    status = 0
    while any(p.poll() is None for p in procs):
        failed = [p.returncode for p in procs if p.returncode not in (None, 0)]
        timed_out = deadline is not None and time.monotonic() > deadline
        if failed or timed_out:
            status = failed[0] if failed else 124
            for p in procs:
                if p.poll() is None:
                    p.send_signal(signal.SIGTERM)
            grace = time.monotonic() + 10
            while any(p.poll() is None for p in procs) and time.monotonic() < grace:
                time.sleep(0.1)
            for p in procs:
                if p.poll() is None:
                    p.kill()
            break
        time.sleep(0.1)
    for p in procs:
        p.wait()
    for t in threads:
        t.join(timeout=5)
    if status == 0:
        status = next((p.returncode for p in procs if p.returncode != 0), 0)
    return status


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--" not in argv:
        print("usage: launch_local.py -n N [--devices-per-process K] -- COMMAND ...",
              file=sys.stderr)
        return 2
    split = argv.index("--")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--num-processes", type=int, required=True)
    parser.add_argument("--devices-per-process", type=int, default=None,
                        help="fake CPU devices per process (sets JAX_PLATFORMS=cpu)")
    parser.add_argument("--timeout", type=float, default=None, help="seconds before all are stopped")
    args = parser.parse_args(argv[:split])
    command = argv[split + 1:]
    if not command or args.num_processes < 1:
        parser.error("need a command after -- and -n >= 1")
    return launch(command, args.num_processes, args.devices_per_process, args.timeout)


if __name__ == "__main__":
    sys.exit(main())
