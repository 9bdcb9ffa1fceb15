"""LoRA: identity at init, only adapters train, merge == base + adapter, adapter files, fingerprints."""
import json

import pytest
import torch

import gpt3lab
from gpt3lab import adapters, checkpoint as ckpt_io
from gpt3lab.config import TrainConfig
from gpt3lab.errors import CheckpointError, ConfigError
from gpt3lab.finetune.data import RowBatches, build_rows, encode_example
from gpt3lab.model import GPT, lora
from gpt3lab.presets import get_preset
from gpt3lab.train.loop import RunInfo, Trainer

from ft_helpers import tiny_model

X = torch.randint(0, 250, (2, 12), generator=torch.Generator().manual_seed(0))


def _randomize_adapters(model, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in lora.lora_modules(model).values():
            m.lora_B.copy_(torch.randn(m.lora_B.shape, generator=g) * 0.1)


def test_at_init_output_equals_base(ft_tok):
    model = tiny_model(ft_tok).eval()
    ref = model(X)[0]
    names = lora.inject_lora(model, lora.LoRAConfig(rank=4, targets=("c_attn", "c_proj", "c_fc")))
    assert len(names) == 2 * 4                                   # c_attn, attn.c_proj, c_fc, mlp.c_proj
    assert torch.equal(model(X)[0], ref)


def test_targets_select_modules_and_bad_target_is_config_error(ft_tok):
    model = tiny_model(ft_tok)
    names = lora.inject_lora(model, lora.LoRAConfig(targets=("mlp.c_proj",)))
    assert names == ["transformer.h.0.mlp.c_proj", "transformer.h.1.mlp.c_proj"]
    with pytest.raises(ConfigError, match="unknown target"):
        lora.LoRAConfig(targets=("q_proj",))
    with pytest.raises(ConfigError, match="rank"):
        lora.LoRAConfig(rank=0)


def test_only_adapters_change_after_training_steps(ft_tok):
    model = tiny_model(ft_tok)
    lora.inject_lora(model, lora.LoRAConfig(rank=4, dropout=0.1))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    exs = [encode_example(ft_tok, f"{a}+{a}=", str(2 * a)) for a in range(10, 40)]
    Xr, Yr = build_rows(exs, 32, ft_tok.eot_id)
    cfg = TrainConfig(batch_size=4, max_steps=3, warmup_steps=1, lr=1e-2, peak_flops=1e12, device="cpu")
    trainer = Trainer(model, model.config, cfg, RowBatches(Xr, Yr, 4), info=RunInfo(progress=False))
    assert {id(p) for g in trainer.optimizer.param_groups for p in g["params"]} == \
        {id(p) for n, p in model.named_parameters() if n.endswith(("lora_A", "lora_B"))}
    trainer.fit()
    after = model.state_dict()
    changed = sorted(k for k in before if not torch.equal(before[k], after[k]))
    assert changed and all(k.endswith(("lora_A", "lora_B")) for k in changed)
    assert any(k.endswith("lora_B") for k in changed)


def test_merged_weights_give_the_same_logits(ft_tok):
    model = tiny_model(ft_tok).eval()
    lora.inject_lora(model, lora.LoRAConfig(rank=4, alpha=8))
    _randomize_adapters(model)
    with torch.no_grad():
        want = model(X)[0]
    merged = lora.merge_lora(model)
    assert not lora.lora_modules(merged) and set(lora.base_state(merged)) == set(ckpt_io.model_state(merged))
    with torch.no_grad():
        got = merged(X)[0]
    assert torch.allclose(got, want, atol=1e-5) and not torch.equal(got, tiny_model(ft_tok).eval()(X)[0])


def test_trainable_fraction_at_rank_8_on_gpt3_small_is_under_one_percent():
    with torch.device("meta"):
        model = GPT(get_preset("gpt3-small").model_config())
        base_total = lora.param_counts(model)[1]
        lora.inject_lora(model, lora.LoRAConfig(rank=8, targets=("c_attn", "c_proj")))
    trainable, total = lora.param_counts(model)
    d, L = 768, 12   # c_attn d->3d, attn.c_proj d->d, mlp.c_proj 4d->d: r * (in + out) each
    assert trainable == L * 8 * ((d + 3 * d) + (d + d) + (4 * d + d)) == 811_008
    assert total == base_total + trainable
    assert trainable / total < 0.01                              # 0.64%


def test_adapter_round_trip_and_fingerprint_mismatch(ft_tok, base_ckpt, tmp_path):
    model = ckpt_io.load_model(base_ckpt)
    fp = lora.fingerprint(model)
    cfg = lora.LoRAConfig(rank=2)
    lora.inject_lora(model, cfg)
    assert lora.fingerprint(model) == fp                         # adapters are not part of the base
    _randomize_adapters(model)
    out = adapters.save_adapter(tmp_path / "adapter", model, cfg, str(base_ckpt), fp, ft_tok)
    size = (out / adapters.ADAPTER_WEIGHTS).stat().st_size
    assert size < (base_ckpt / "model.safetensors").stat().st_size / 5
    loaded, tok = gpt3lab.load(out)
    with torch.no_grad():
        assert torch.equal(loaded(X)[0], model.eval()(X)[0])
    assert tok.vocab_size == ft_tok.vocab_size
    other = tiny_model(ft_tok, seed=5)                           # same shape, different weights
    with pytest.raises(CheckpointError, match="different base model"):
        adapters.load_adapter(other, out)
    bad = adapters.save_adapter(tmp_path / "a2", model, cfg, str(base_ckpt.parent / "gone"), fp)
    with pytest.raises(CheckpointError, match="does not exist"):
        gpt3lab.load(bad)


def test_a_flipped_adapter_byte_fails_its_checksum(ft_tok, base_ckpt, tmp_path):
    model = ckpt_io.load_model(base_ckpt)
    cfg = lora.LoRAConfig(rank=2)
    lora.inject_lora(model, cfg)
    _randomize_adapters(model)
    out = adapters.save_adapter(tmp_path / "adapter", model, cfg, str(base_ckpt), lora.fingerprint(model), ft_tok)
    f = out / adapters.ADAPTER_WEIGHTS
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0x01
    f.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="adapter.safetensors: truncated or corrupt \\(SHA-256"):
        gpt3lab.load(out)


def test_lora_config_dict_round_trip_and_bad_dicts():
    cfg = lora.LoRAConfig(rank=4, alpha=8.0, dropout=0.1, targets=("c_attn", "mlp.c_proj"))
    d = cfg.to_dict()
    assert d == {"rank": 4, "alpha": 8.0, "dropout": 0.1, "targets": ["c_attn", "mlp.c_proj"]}
    assert lora.LoRAConfig.from_dict(json.loads(json.dumps({**d, "format": "x", "base": "y"}))) == cfg
    with pytest.raises(ConfigError, match="adapter_config.json: not a LoRA config.*rank"):
        lora.LoRAConfig.from_dict({"alpha": 1.0}, where="adapter_config.json")
    with pytest.raises(ConfigError, match="rank"):
        lora.LoRAConfig.from_dict({**d, "rank": 0})
