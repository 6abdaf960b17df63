"""Every configs/*.py loads, has the required keys and a runnable docstring, and its model,
optimizer and mesh validate (on 8 fake devices); `--config.KEY=VALUE` overrides."""

import glob
import importlib.util
import os

import jax
import ml_collections
import pytest

from roberta_jax import optim, sharding
from roberta_jax.errors import ConfigError
from roberta_jax.train import apply_override, load_config, resolve_model_config, validate_config

CONFIGS = sorted(glob.glob(os.path.join(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))), "configs", "*.py")))


def test_the_four_configs_exist():
    names = {os.path.basename(p) for p in CONFIGS}
    assert {"tiny.py", "base.py", "large.py", "base_lamb_32k.py"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=os.path.basename)
def test_config_loads_and_validates(path):
    cfg = load_config(path, ["--config.data.path=/prepared"])
    validate_config(cfg)
    spec = importlib.util.spec_from_file_location("c", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert "roberta-jax pretrain --config configs/" in module.__doc__
    assert "should show" in module.__doc__
    model = resolve_model_config(cfg, {"vocab_size": 50265, "pad_id": 1, "bos_id": 0, "eos_id": 2})
    assert model.max_sequence_length >= cfg.seq_len
    schedule = optim.make_schedule(cfg)
    assert float(schedule(cfg.warmup_steps)) == pytest.approx(cfg.learning_rate, rel=1e-6)
    optim.make_optimizer(cfg)
    mesh = sharding.make_mesh(cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor)
    assert mesh.size == jax.device_count() == 8
    sharding.rules_for(mesh, cfg.mesh.rules)
    sharding.validate(mesh, global_batch_size=cfg.batch_size,
                      grad_accum_steps=cfg.grad_accum_steps,
                      num_heads=model.num_attention_heads,
                      intermediate_size=model.intermediate_size, hidden_size=model.hidden_size)


def test_paper_recipes():
    base = load_config(CONFIGS[[os.path.basename(p) for p in CONFIGS].index("base.py")])
    large = load_config(CONFIGS[[os.path.basename(p) for p in CONFIGS].index("large.py")])
    lamb = load_config(CONFIGS[[os.path.basename(p) for p in CONFIGS].index("base_lamb_32k.py")])
    for cfg, lr, warmup in ((base, 6e-4, 24_000), (large, 4e-4, 30_000)):
        assert (cfg.batch_size, cfg.steps, cfg.seq_len, cfg.optimizer) == (8192, 500_000, 512, "adamw")
        assert (cfg.learning_rate, cfg.warmup_steps) == (lr, warmup)
        assert (cfg.adam_b1, cfg.adam_b2, cfg.adam_eps, cfg.weight_decay) == (0.9, 0.98, 1e-6, 0.01)
        assert (cfg.schedule, cfg.end_learning_rate, cfg.mask_prob) == ("linear", 0.0, 0.15)
        model = resolve_model_config(cfg, {"vocab_size": 50265})
        assert model.hidden_dropout_prob == model.attention_probs_dropout_prob == 0.1
    assert (lamb.optimizer, lamb.batch_size, lamb.seq_len) == ("lamb", 32_768, 512)
    # The same sequences as the 8K recipe: 32K x 125K = 8K x 500K.
    assert lamb.batch_size * lamb.steps == base.batch_size * base.steps
    assert resolve_model_config(large, {"vocab_size": 50265}).hidden_size == 1024


def _cfg():
    return ml_collections.ConfigDict(dict(steps=10, lr=1e-3, flag=False, name="x", opt=None,
                                          mesh=dict(data=-1), model=dict(preset="tiny")))


def test_overrides_are_type_checked():
    cfg = _cfg()
    for o in ("--config.steps=1e3", "--config.lr=2", "--config.flag=true", "--config.name=y",
              "--config.opt=(1, 2)", "--config.mesh.data=4", "--config.model.hidden_size=32"):
        apply_override(cfg, o)
    assert (cfg.steps, cfg.lr, cfg.flag, cfg.name, cfg.opt) == (1000, 2.0, True, "y", (1, 2))
    assert cfg.mesh.data == 4 and cfg.model.hidden_size == 32
    apply_override(cfg, "--config.opt=None")
    assert cfg.opt is None


@pytest.mark.parametrize("override, message", [
    ("--config.stepz=1", "unknown config key 'stepz'"),
    ("--config.mesh.dat=1", "unknown config key 'mesh.dat'"),
    ("--config.model.hidden=1", "unknown config key 'model.hidden'"),
    ("--config.steps=1.5", "--config.steps='1.5': expected int"),
    ("--config.flag=maybe", "expected bool"),
    ("--config.mesh=1", "is a group"),
    ("--config.steps", "not of the form --config.KEY=VALUE"),
])
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(".", r"\.")):
        apply_override(_cfg(), override)


def test_unknown_model_field_and_missing_file():
    cfg = _cfg()
    cfg.model.nonsense = 1
    with pytest.raises(ConfigError, match="not RobertaConfig fields: \\['nonsense'\\]"):
        resolve_model_config(ml_collections.ConfigDict(dict(model=cfg.model, data=dict(path=""))))
    with pytest.raises(ConfigError, match="does not exist"):
        load_config("configs/none.py")
