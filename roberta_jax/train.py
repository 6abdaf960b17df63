"""Pretraining loop: config -> mesh -> sharded state (fresh, restored or from a model dir) ->
jitted steps -> metrics, evaluation, checkpoints, preemption.

Reads top to bottom: multi-host start-up, setup, the loop, the CLI entry; config files and
overrides are read in experiment.py (re-exported here). Everything with effects (files, clocks, signals) lives here or in checkpoint.py and
metrics.py; the step functions (steps.py) are pure.
"""

from __future__ import annotations

import dataclasses
import math
import os
import signal
import threading
import time
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from roberta_jax import checkpoint as checkpoint_lib
from roberta_jax import metrics as metrics_lib
from roberta_jax import optim, sharding, steps
from roberta_jax.config import RobertaConfig
from roberta_jax.errors import ConfigError, UserError
from roberta_jax.experiment import (  # noqa: F401  (re-exported: tests and callers import them here)
    DTYPES, apply_override, load_config, resolve_model_config, validate_config)
from roberta_jax.files import write_text_atomic


class NonFiniteLossError(UserError):
    """The loss became NaN or infinite; the run stops without saving the broken state."""


# ============================================================================ multi-host
def initialize_distributed(coordinator_address: str | None = None,
                           num_processes: int | None = None,
                           process_id: int | None = None) -> None:
    """Join the JAX cluster: explicit flags, or what JAX auto-detects (TPU pods, SLURM,
    Open MPI). A single process without a cluster environment does nothing."""
    given = (coordinator_address, num_processes, process_id)
    if jax.distributed.is_initialized():
        return
    if any(v is not None for v in given):
        if any(v is None for v in given):
            raise ConfigError(f"multi-host flags must be given together: --coordinator_address="
                              f"{coordinator_address} --num_processes={num_processes} "
                              f"--process_id={process_id}")
        jax.distributed.initialize(coordinator_address, num_processes, process_id)
    elif _cluster_detected():
        jax.distributed.initialize()


def _cluster_detected() -> bool:
    env = os.environ
    return (int(env.get("SLURM_NTASKS", "1")) > 1 or int(env.get("OMPI_COMM_WORLD_SIZE", "1")) > 1
            or "," in env.get("TPU_WORKER_HOSTNAMES", "") or "JAX_COORDINATOR_ADDRESS" in env)


# ============================================================================ preemption
class Preemption:
    """SIGTERM/SIGINT set a flag; the loop saves a checkpoint at the next step and returns."""

    def __init__(self):
        self.signal: str | None = None
        self._previous: dict = {}

    def __enter__(self) -> "Preemption":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        self.signal = signal.Signals(signum).name

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def requested(self, sync: bool) -> bool:
        """Whether to stop now; with sync, every process agrees (a collective)."""
        if not sync:
            return self.signal is not None
        from jax.experimental import multihost_utils

        flags = multihost_utils.process_allgather(np.int32(self.signal is not None))
        return bool(np.any(flags))


# ============================================================================ setup
def _write_config(cfg: ml_collections.ConfigDict, model_config: RobertaConfig, workdir: str) -> None:
    resolved = ml_collections.ConfigDict(cfg.to_dict())
    resolved.model = dataclasses.asdict(model_config)
    write_text_atomic(os.path.join(workdir, "config.json"),
                      resolved.to_json(indent=2, sort_keys=True) + "\n")


def _masking_config(cfg, model_config: RobertaConfig, data_meta: dict) -> steps.MaskingConfig:
    word_start = None
    if cfg.get("whole_word_masking", False):
        from roberta_jax.data.tokenizer import load_tokenizer, word_start_table

        tok = load_tokenizer(cfg.data.tokenizer or data_meta["tokenizer_dir"])
        word_start = tuple(bool(b) for b in word_start_table(tok, model_config.vocab_size))
    return steps.MaskingConfig(
        vocab_size=model_config.vocab_size, mask_id=int(data_meta["mask_id"]),
        special_ids=tuple(data_meta["special_ids"]), mask_prob=float(cfg.get("mask_prob", 0.15)),
        whole_word=bool(cfg.get("whole_word_masking", False)), word_start=word_start)


def _init_from(path: str, model_config: RobertaConfig, dtype, mesh, rules, params_shardings):
    """Params of a model dir (HF, roberta_jax, fairseq or a workdir) laid out as ours."""
    from roberta_jax.convert import from_pretrained, mapping

    loaded_model, params = from_pretrained(path, task="masked-lm", dtype=dtype, mesh=mesh,
                                           rules=rules)
    loaded = loaded_model.config
    arch = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
            "intermediate_size", "max_position_embeddings", "type_vocab_size")
    diff = {k: (getattr(loaded, k), getattr(model_config, k)) for k in arch
            if getattr(loaded, k) != getattr(model_config, k)}
    if diff:
        raise ConfigError(f"init_from {path!r} does not match the config's model "
                          f"(checkpoint, config): {diff}")
    if loaded.scan_layers != model_config.scan_layers:
        params = jax.tree.map(np.asarray, params)
        restack = mapping.stack_layers if model_config.scan_layers else mapping.unstack_layers
        params = restack(params, model_config.num_hidden_layers)
    return jax.device_put(params, params_shardings)


# ============================================================================ the loop
def pretrain(cfg: ml_collections.ConfigDict, workdir: str, *,
             on_step: Callable[[int], None] | None = None,
             transfer_guard: str = "allow") -> dict:
    """Train (or resume) in `workdir`; returns the last logged metrics plus 'preempted'.
    on_step(step) runs after every dispatched step (tests use it to send signals).
    transfer_guard: `jax.transfer_guard` level for the loop; tests pass "disallow" to prove
    every host<->device copy in it is explicit (device_put / device_get)."""
    from roberta_jax.data import check_max_positions, check_tokenizer, read_metadata
    from roberta_jax.data.loader import make_loader, to_global_array
    from roberta_jax.model import make_model, param_count

    # ---------------------------------------------------------------- config and data
    validate_config(cfg)
    data_meta = read_metadata(cfg.data.path)
    if cfg.data.tokenizer:
        check_tokenizer(cfg.data.path, cfg.data.tokenizer)
    if data_meta["seq_len"] != cfg.seq_len:
        raise ConfigError(f"config seq_len={cfg.seq_len} but {cfg.data.path!r} holds blocks of "
                          f"{data_meta['seq_len']} tokens")
    model_config = resolve_model_config(cfg, data_meta)
    check_max_positions(cfg.data.path, model_config.max_position_embeddings,
                        vocab_size=model_config.vocab_size)
    primary = jax.process_index() == 0

    # ---------------------------------------------------------------- mesh, model, state
    mesh = sharding.make_mesh(cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor)
    rules = sharding.rules_for(mesh, cfg.mesh.rules)
    sharding.validate(mesh, global_batch_size=cfg.batch_size,
                      grad_accum_steps=cfg.grad_accum_steps,
                      num_heads=model_config.num_attention_heads,
                      intermediate_size=model_config.intermediate_size,
                      hidden_size=model_config.hidden_size)
    dtype = DTYPES[cfg.dtype]
    model = make_model(model_config, "masked-lm", dtype=dtype, param_dtype=jnp.float32)
    tx, schedule = optim.make_optimizer(cfg), optim.make_schedule(cfg)
    masking = _masking_config(cfg, model_config, data_meta)
    if primary:
        os.makedirs(workdir, exist_ok=True)
        _write_config(cfg, model_config, workdir)

    ckpt = checkpoint_lib.Checkpointer(workdir, keep=cfg.keep_checkpoints)
    abstract, state_shardings = steps.abstract_train_state(model, tx, mesh, rules)
    data_state = None
    start = ckpt.latest_step()
    if start is not None:
        restored, meta = ckpt.restore(start, dataclasses.asdict(abstract))
        state, data_state = steps.TrainState(**restored), meta["data"]
        print(f"resumed from {checkpoint_lib.checkpoint_dir(workdir)}/{start}", flush=True)
    else:
        start = 0
        state, _ = steps.create_train_state(model, tx, jax.random.key(cfg.seed), mesh, rules)
        if cfg.init_from:
            state = state.replace(params=_init_from(cfg.init_from, model_config, dtype, mesh,
                                                    rules, state_shardings.params))
            print(f"initialised params from {cfg.init_from}", flush=True)

    # ---------------------------------------------------------------- data
    batch_sharding = sharding.batch_sharding(mesh)
    train_iter = iter(make_loader(cfg.data.path, split="train", global_batch_size=cfg.batch_size,
                                  seed=cfg.seed, worker_count=cfg.data.get("worker_count", 0)))
    if data_state is not None:
        train_iter.set_state(data_state)
    eval_loader = make_loader(cfg.data.path, split="validation", shuffle=False,
                              global_batch_size=cfg.batch_size) if cfg.eval_batches else None

    def global_batch(host_batch: np.ndarray) -> jax.Array:
        # The loader gives each process its contiguous rows, so the global array is the same,
        # row for row (and so are its masks), whatever the number of processes.
        return to_global_array(host_batch, batch_sharding)

    # ---------------------------------------------------------------- compiled steps
    step_fn = steps.make_train_step(model, tx, masking, grad_accum_steps=cfg.grad_accum_steps,
                                    schedule=schedule, mesh=mesh, rules=rules)
    batch_struct = jax.ShapeDtypeStruct((cfg.batch_size, cfg.seq_len), jnp.int32,
                                        sharding=batch_sharding)
    t0 = time.perf_counter()
    train_step = steps.jit_train_step(step_fn, state_shardings, batch_sharding).lower(
        abstract, batch_struct).compile()
    eval_step = steps.jit_eval_step(steps.make_eval_step(model, masking, mesh=mesh, rules=rules),
                                    state_shardings.params, batch_sharding)
    # One device array per eval batch: indexing a stacked device array inside the loop would
    # be an implicit host-to-device transfer of the index.
    eval_rngs = jax.device_put(
        [jax.random.key_data(jax.random.fold_in(jax.random.key(cfg.seed + 1), i))
         for i in range(cfg.eval_batches)], sharding.replicated(mesh))
    num_params = param_count(state.params)
    flops = metrics_lib.flops_per_token(model_config, num_params, cfg.seq_len,
                                         masking.max_predictions(cfg.seq_len))
    peak, peak_source = metrics_lib.peak_flops()
    if primary:
        print(f"model: {num_params:,} params, {flops / 1e6:.1f} MFLOP/token; mesh "
              f"{dict(mesh.shape)} on {jax.device_count()} {jax.devices()[0].platform} devices "
              f"({jax.process_count()} processes); train step compiled in "
              f"{time.perf_counter() - t0:.1f}s; peak {peak:.3g} FLOP/s ({peak_source})",
              flush=True)
        # Known before the first step runs: an out-of-memory config shows here, not mid-run.
        memory = metrics_lib.describe_memory(train_step)
        if memory:
            print(memory, flush=True)

    writer = metrics_lib.MetricsWriter(workdir, start_step=start, total_steps=cfg.steps,
                                       enabled=primary)
    throughput = metrics_lib.Throughput(
        tokens_per_step=cfg.batch_size * cfg.seq_len, flops_per_token=flops, peak=peak,
        start_step=start, total_steps=cfg.steps)
    last: dict = {}

    def handle(step: int, step_metrics: dict) -> None:
        """Step `step`'s metrics, read one step late: stop on a non-finite loss, log."""
        nonlocal last
        logging = step % cfg.log_every == 0 or step == cfg.steps
        values = jax.device_get(step_metrics if logging else step_metrics["loss"])
        loss = float(values["loss"] if logging else values)
        if not math.isfinite(loss):
            raise NonFiniteLossError(
                f"loss is {loss} at step {step}; stopping (lower learning_rate={cfg.learning_rate}"
                f" or set max_grad_norm; the last checkpoint is step {ckpt.latest_step()})")
        if logging:
            last = writer.write(step, {**values, **throughput.update(step)})
            writer.console(last)

    def evaluate(step: int) -> None:
        nonlocal last
        sums = {"loss_sum": 0.0, "correct_sum": 0.0, "weight_sum": 0.0}
        for i, host_batch in zip(range(cfg.eval_batches), iter(eval_loader)):
            out = jax.device_get(eval_step(state.params, global_batch(host_batch), eval_rngs[i]))
            sums = {k: sums[k] + float(out[k]) for k in sums}
        loss = sums["loss_sum"] / max(sums["weight_sum"], 1.0)
        record = writer.write(step, {"eval_loss": loss, "eval_perplexity": math.exp(min(loss, 80)),
                                     "eval_mlm_accuracy": sums["correct_sum"] / max(sums["weight_sum"], 1.0),
                                     "eval_scored_tokens": sums["weight_sum"]})
        writer.console(record)
        last = {**last, **record}

    def save(step: int) -> None:
        ckpt.save(step, {"step": state.step, "params": state.params,
                         "opt_state": state.opt_state, "rng": state.rng},
                  {"data": train_iter.get_state(), "config": cfg.to_dict()})

    # ---------------------------------------------------------------- train
    preempted = False
    try:
        with Preemption() as preemption, jax.transfer_guard(transfer_guard):
            pending = None
            throughput.reset(start)
            for step in range(start + 1, cfg.steps + 1):
                state, step_metrics = train_step(state, global_batch(next(train_iter)))
                if pending is not None:
                    handle(*pending)  # the device is busy with `step` meanwhile
                pending = (step, step_metrics)
                if on_step is not None:
                    on_step(step)
                sync = jax.process_count() > 1
                preempted = (not sync or step % cfg.log_every == 0) and preemption.requested(sync)
                do_eval = cfg.eval_batches and (step % cfg.eval_every == 0 or step == cfg.steps)
                do_save = step % cfg.checkpoint_every == 0 or step == cfg.steps or preempted
                if do_eval or do_save:
                    handle(*pending)  # never save a state whose loss was not finite
                    pending = None
                    if do_eval:
                        evaluate(step)
                    if do_save:
                        save(step)
                    throughput.reset(step)
                if preempted:
                    if primary:
                        print(f"preempted ({preemption.signal or 'another process'}) at step "
                              f"{step}: checkpoint saved; rerun the same command to resume",
                              flush=True)
                    break
            if pending is not None:
                handle(*pending)
    finally:
        ckpt.close()
        writer.close()
    if primary and not preempted:
        png = metrics_lib.plot_metrics(metrics_lib.read_jsonl(writer.path),
                                       os.path.join(workdir, "metrics.png"))
        print(f"done: {cfg.steps} steps; metrics in {writer.path}, plot {png}", flush=True)
    return {**last, "preempted": preempted}


# ============================================================================ CLI entry
def pretrain_from_cli(config: str, overrides: Sequence[str], workdir: str, *,
                      coordinator_address: str | None = None, num_processes: int | None = None,
                      process_id: int | None = None) -> dict:
    """`roberta-jax pretrain`: join the cluster, load the config, train (or resume)."""
    initialize_distributed(coordinator_address, num_processes, process_id)
    cfg = load_config(config, overrides)
    return pretrain(cfg, workdir)
