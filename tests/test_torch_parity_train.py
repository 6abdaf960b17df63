"""10 training steps of our AdamW step == transformers' RobertaForMaskedLM + torch AdamW,
from the same weights, batches and masks (dropout 0). Loss within 1e-4 relative each step."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from roberta_jax import optim, sharding, steps
from roberta_jax.config import RobertaConfig
from roberta_jax.convert.mapping import params_to_hf
from roberta_jax.model import make_model

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

CFG = RobertaConfig(vocab_size=128, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                    intermediate_size=64, max_position_embeddings=40, hidden_dropout_prob=0.0,
                    attention_probs_dropout_prob=0.0)
LR, WARMUP, TOTAL, WD = 1e-2, 3, 10, 0.01
# A small clipping threshold so clipping is active on most steps (checked below).
MAX_NORM = 0.5
OPT = ml_collections.ConfigDict(dict(optimizer="adamw", learning_rate=LR, warmup_steps=WARMUP,
                                     steps=TOTAL, schedule="linear", weight_decay=WD,
                                     max_grad_norm=MAX_NORM))
MASKING = steps.MaskingConfig(vocab_size=128, mask_id=4, special_ids=(0, 1, 2, 3, 4))
# Measured max relative loss difference over the 10 steps: 2.7e-7 (loss 4.86 -> 3.53).
LOSS_RTOL = 1e-4


def hf_linear_lambda(step: int) -> float:
    """transformers.get_linear_schedule_with_warmup's multiplier, written out."""
    if step < WARMUP:
        return step / WARMUP
    return max(0.0, (TOTAL - step) / (TOTAL - WARMUP))


def batches(n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    out = []
    for _ in range(n):
        # A 16-token sub-vocabulary: its unigram distribution is learnable in a few steps.
        toks = rng.integers(5, 21, (8, 16)).astype(np.int32)
        toks[:, 0], toks[:, -1] = CFG.bos_token_id, CFG.eos_token_id
        toks[-1, 12:] = CFG.pad_token_id
        toks[-1, 11] = CFG.eos_token_id
        out.append(toks)
    return out


def test_ten_adamw_steps_match_pytorch():
    mesh = sharding.make_mesh(1, 1, 1, devices=jax.devices()[:1])
    rules = sharding.rules_for(mesh)
    model, tx = make_model(CFG, "masked-lm"), optim.make_optimizer(OPT)
    state, shardings = steps.create_train_state(model, tx, jax.random.key(3), mesh, rules)
    step = steps.jit_train_step(
        steps.make_train_step(model, tx, MASKING, schedule=optim.make_schedule(OPT)),
        shardings, sharding.batch_sharding(mesh))

    torch.manual_seed(0)
    hf_cfg = transformers.RobertaConfig(**CFG.to_hf_dict(["RobertaForMaskedLM"]))
    hf_cfg._attn_implementation = "eager"
    torch_model = transformers.RobertaForMaskedLM(hf_cfg).float()
    sd = {k: torch.from_numpy(np.array(v)) for k, v in
          params_to_hf(jax.device_get(state.params), CFG, "masked-lm").items()}
    missing, unexpected = torch_model.load_state_dict(sd, strict=False)
    assert set(missing) <= {"lm_head.decoder.weight", "lm_head.decoder.bias"} and not unexpected
    torch_model.train()  # dropout probabilities are 0, so train mode is deterministic

    def no_decay(name: str) -> bool:
        return name.endswith("bias") or name.endswith(("LayerNorm.weight", "layer_norm.weight"))

    named = list(torch_model.named_parameters())
    groups = [{"params": [p for n, p in named if not no_decay(n)], "weight_decay": WD},
              {"params": [p for n, p in named if no_decay(n)], "weight_decay": 0.0}]
    # Both sides decay the same tensors.
    ours_decayed = sum(jax.tree_util.tree_leaves(optim.decay_mask(state.params)))
    assert ours_decayed == len(groups[0]["params"])
    opt = torch.optim.AdamW(groups, lr=LR, betas=(0.9, 0.98), eps=1e-6)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, hf_linear_lambda)

    ours, theirs, clipped = [], [], 0
    for i, tokens in enumerate(batches(TOTAL)):
        # The masks our step draws at this step, fed to torch as masked inputs and labels.
        mask_rng, _ = steps.step_rngs(state.rng, state.step)
        inputs, targets, weights = jax.device_get(MASKING.mask(mask_rng, jnp.asarray(tokens)))
        labels = np.where(weights > 0, targets, -100)

        state, metrics = step(state, tokens)
        ours.append(float(metrics["loss"]))
        clipped += float(metrics["grad_norm"]) > MAX_NORM
        assert float(metrics["learning_rate"]) == pytest.approx(LR * hf_linear_lambda(i), abs=1e-9)

        out = torch_model(input_ids=torch.from_numpy(inputs.astype(np.int64)),
                          attention_mask=torch.from_numpy((tokens != CFG.pad_token_id)
                                                          .astype(np.int64)),
                          labels=torch.from_numpy(labels.astype(np.int64)))
        opt.zero_grad()
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(torch_model.parameters(), MAX_NORM)
        opt.step()
        sched.step()
        theirs.append(out.loss.item())

    assert clipped >= 5  # clipping was exercised
    assert ours[-1] < ours[0] - 0.02  # and training moved the loss
    np.testing.assert_allclose(ours, theirs, rtol=LOSS_RTOL)
    # Final weights agree as well: compare the FFN-in kernel of layer 1.
    final = params_to_hf(jax.device_get(state.params), CFG, "masked-lm")
    name = "roberta.encoder.layer.1.intermediate.dense.weight"
    np.testing.assert_allclose(final[name], torch_model.state_dict()[name].numpy(), atol=1e-5)
