"""gpt3lab size: parameter counts vs the model and the paper, FLOPs, memory, cost, CLI and errors."""
from __future__ import annotations

import json

import pytest

from gpt3lab import sizing
from gpt3lab.cli import main
from gpt3lab.config import ModelConfig
from gpt3lab.errors import ConfigError
from gpt3lab.presets import GPT3_PRESETS, PRESETS, get_preset

# With the table's own shapes these three cannot be within 1% of the paper's rounded names
# (Medium 355.9M vs "350M" +1.7%, XL 1.316B vs "1.3B" +1.2%, 2.7B 2.652B vs "2.7B" -1.8%; see the
# presets module docstring), so they get 2%; the other five must be within 1%.
LOOSE = {"gpt3-medium", "gpt3-xl", "gpt3-2.7b"}


@pytest.mark.parametrize("name", GPT3_PRESETS)
def test_params_match_paper_table(name):
    pre = get_preset(name)
    n = sizing.n_params(pre.model_config())
    tol = 0.02 if name in LOOSE else 0.01
    assert abs(n / pre.paper_params - 1) < tol, (name, n)


def test_gpt3_small_exact_breakdown():
    # GPT-2 124M shape with context 2048: hand-computed from the layer shapes
    p = sizing.param_counts(get_preset("gpt3-small").model_config())
    d = 768
    assert p["wte"] == 50257 * d and p["wpe"] == 2048 * d
    assert p["attention"] == 12 * (d * 3 * d + 3 * d + d * d + d)
    assert p["mlp"] == 12 * (d * 4 * d + 4 * d + 4 * d * d + d)
    assert p["norms"] == 25 * 2 * d
    # = GPT-2 124M's well-known 124,439,808 plus 1024 more positions x 768
    assert p["total"] == 124_439_808 + 1024 * 768


def test_13b_attention_width_differs_from_d_model():
    cfg = get_preset("gpt3-13b").model_config()
    assert cfg.d_attn == 5120 != cfg.d_model
    # c_attn 5140 -> 3*5120 and c_proj 5120 -> 5140, with biases
    assert sizing.param_counts(cfg)["attention"] == 40 * (5140 * 15360 + 15360 + 5120 * 5140 + 5140)


@pytest.mark.parametrize("name", list(PRESETS) + ["nobias"])
def test_params_equal_model_numel(name):
    torch = pytest.importorskip("torch")
    model_mod = pytest.importorskip("gpt3lab.model")
    cfg = (ModelConfig(vocab_size=100, context=32, n_layer=3, n_head=2, d_model=16, d_head=12, d_ff=40,
                       bias=False) if name == "nobias" else get_preset(name).model_config())
    with torch.device("meta"):
        m = model_mod.GPT(cfg)
    assert sizing.n_params(cfg) == sum(p.numel() for p in m.parameters())


# ---------------------------------------------------------------------------------------------
# FLOPs


def test_175b_training_flops_match_paper():
    f = sizing.training_flops(get_preset("gpt3-175b").model_config(), 300e9)
    assert abs(f["6ND"] / 3.14e23 - 1) < 0.01
    assert abs(f["total"] / 3.14e23 - 1) < 0.02
    assert 0 < f["attention"] < 0.01 * f["total"]    # under 1% at d_model 12288


def test_mean_attended_keys():
    assert sizing.mean_attended_keys(4) == (1 + 2 + 3 + 4) / 4
    assert sizing.mean_attended_keys(5, window=2) == (1 + 2 + 2 + 2 + 2) / 5
    assert sizing.mean_attended_keys(3, window=10) == sizing.mean_attended_keys(3)


def test_attention_term_uses_window_on_banded_layers():
    base = dict(vocab_size=10, context=8, n_layer=2, n_head=2, d_model=4, local_window=2)
    dense = ModelConfig(**base, attention_pattern="dense")
    alt = ModelConfig(**base, attention_pattern="alternating")
    k_dense, k_band = 36 / 8, (1 + 2 * 7) / 8
    assert sizing.attention_flops_per_token(dense) == 4 * 4 * 2 * k_dense
    assert sizing.attention_flops_per_token(alt) == 4 * 4 * (k_dense + k_band)
    f = sizing.training_flops(alt, 1000)
    assert f["attention"] == 3 * 1000 * 4 * 4 * (k_dense + k_band)
    assert f["6ND"] == 6 * sizing.n_params(alt) * 1000
    assert sizing.inference_flops_per_token(alt) == 2 * sizing.n_params(alt) + 16 * (k_dense + k_band)


# ---------------------------------------------------------------------------------------------
# memory


def test_ddp_states_are_16_bytes_per_param_and_fsdp_divides():
    cfg = get_preset("gpt3-xl").model_config()
    n = sizing.n_params(cfg)
    ddp = sizing.state_bytes(cfg, world_size=64, parallel="ddp")
    assert ddp["total"] == 16 * n
    assert (ddp["weights"], ddp["grads"], ddp["adam"]) == (4 * n, 4 * n, 8 * n)
    fsdp = sizing.state_bytes(cfg, world_size=64, parallel="fsdp")
    assert fsdp["total"] == pytest.approx(16 * n / 64)
    mem = sizing.memory_per_gpu(cfg, world_size=64, parallel="fsdp", micro_batch=2)
    assert mem["total"] == pytest.approx(fsdp["total"] + sizing.activation_bytes(cfg, 2))


def test_activation_formula_with_and_without_checkpointing():
    cfg = ModelConfig(vocab_size=100, context=16, n_layer=4, n_head=2, d_model=8, d_ff=32,
                      attention_pattern="alternating", local_window=4)
    h, a, f, n, V = 8, 8, 32, 2, 100
    dense = 12 * h + 16 + 8 * a + 4 * n + 4 * f
    banded = dense + 8 * a            # [prev | own] block copies of k and v
    assert sizing.layer_activation_bytes(cfg, False) == dense
    assert sizing.layer_activation_bytes(cfg, True) == banded
    head = 6 * h + 16 + 4 * V
    tokens = 3 * 16
    assert sizing.activation_bytes(cfg, 3) == tokens * (2 * dense + 2 * banded + head)
    # checkpointing: each block's fp32 input, plus one (the largest) block while it is recomputed
    assert sizing.activation_bytes(cfg, 3, checkpointing=True) == tokens * (4 * 4 * h + banded + head)
    big = get_preset("gpt3-175b").model_config()
    assert sizing.activation_bytes(big, checkpointing=True) < sizing.activation_bytes(big) / 5


def _saved_bytes(model, idx):
    """Bytes of distinct storages autograd keeps for backward after one bf16-autocast training forward."""
    import torch
    weights = {tuple(p.shape) for p in model.parameters()} | {tuple(p.shape)[::-1] for p in model.parameters()}
    seen = {}

    def pack(t):
        if tuple(t.shape) not in weights:   # skip weights and their bf16 casts: not activations
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            model(idx, idx)
    return sum(seen.values())


@pytest.mark.parametrize("ckpt", [False, True])
def test_activation_formula_matches_what_autograd_saves(ckpt, monkeypatch):
    torch = pytest.importorskip("torch")
    model_mod = pytest.importorskip("gpt3lab.model")
    # the formula counts a flash kernel (no T x T scores kept), as on GPUs; short-context CPU bf16 training
    # uses the math kernel instead (model/attention.py), which also keeps the scores: measure the flash path
    monkeypatch.setattr("gpt3lab.model.attention.CPU_BF16_MATH_MAX_T", 0)
    # sizes chosen so no activation shape equals a weight shape (tokens 3*64=192, V 1000, d 32, d_ff 128)
    cfg = ModelConfig(vocab_size=1000, context=64, n_layer=2, n_head=4, d_model=32, attention_pattern="dense")
    m = model_mod.GPT(cfg).train()
    m.checkpoint_activations = ckpt
    measured = _saved_bytes(m, torch.randint(0, 1000, (3, 64)))
    expected = sizing.activation_bytes(cfg, 3, checkpointing=ckpt)
    if ckpt:   # after forward, the recomputed block is not alive yet
        expected -= 3 * 64 * sizing.layer_activation_bytes(cfg, False)
    assert measured == pytest.approx(expected, rel=0.01)


# ---------------------------------------------------------------------------------------------
# time and cost


def test_lambda_355_gpu_years_and_4_6_million():
    e = sizing.lambda_estimate()
    assert e["gpu_years"] == pytest.approx(355.6, abs=0.1)
    assert abs(e["cost_usd"] / 4.6e6 - 1) < 0.02
    text = sizing.lambda_explanation()
    assert "355.6 V100-years" in text and "$4.67M" in text and "28 TFLOP/s" in text


def test_gpu_time_arithmetic():
    t = sizing.gpu_time(3600 * 1e12, sizing.GPUS["a100"], 0.5, price_per_hour=2.0, world_size=4)
    assert t["gpu_hours"] == pytest.approx(1e12 / 156e12)
    assert t["cost_usd"] == pytest.approx(2.0 * t["gpu_hours"])
    assert t["wall_days"] == pytest.approx(t["gpu_hours"] / 4 / 24)


# ---------------------------------------------------------------------------------------------
# CLI


def _json(capsys, argv):
    capsys.readouterr()
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


def test_cli_json_matches_python_api(capsys):
    out = _json(capsys, ["size", "gpt3-175b", "--json", "--gpu", "a100", "--mfu", "0.5", "--world-size",
                         "1024", "--tokens", "1e11", "--price-per-hour", "1.25"])
    api = sizing.size_report(get_preset("gpt3-175b").model_config(), name="gpt3-175b", tokens=1e11,
                             gpu="a100", mfu=0.5, price_per_hour=1.25, world_size=1024,
                             batch_tokens=3_200_000, paper_params=175e9)
    assert out == json.loads(json.dumps(api))
    assert out["steps"] == 31250 and out["memory"]["fsdp"]["states"] == pytest.approx(16 * 174604259328 / 1024)


def test_cli_all_table_and_lambda_text(capsys):
    assert main(["size", "--all"]) == 0
    text = capsys.readouterr().out
    for name in GPT3_PRESETS:
        assert name in text
    assert "355.6 V100-years" in text
    reports = _json(capsys, ["size", "--all", "--json"])
    assert [r["name"] for r in reports] == GPT3_PRESETS


def test_cli_reads_bare_and_checkpoint_config(tmp_path, capsys):
    model = dict(vocab_size=300, context=64, n_layer=2, n_head=4, d_model=32)
    bare, ckpt = tmp_path / "bare.json", tmp_path / "config.json"
    bare.write_text(json.dumps(model))
    ckpt.write_text(json.dumps({"model": model, "train": {"batch_tokens": 640}}))
    a = _json(capsys, ["size", str(bare), "--json"])
    b = _json(capsys, ["size", str(ckpt), "--json"])
    assert a["params"] == b["params"] == sizing.param_counts(ModelConfig(**model))
    assert a["steps"] is None and b["steps"] == int(300e9 / 640)


def test_cli_reads_checkpoint_and_run_dirs(tmp_path, capsys):
    model = dict(vocab_size=300, context=64, n_layer=2, n_head=4, d_model=32)
    for step, bt in ((100, 640), (200, 1280)):  # the run dir means its newest checkpoint
        ckpt = tmp_path / "run" / "checkpoints" / f"step_{step:08d}"
        ckpt.mkdir(parents=True)
        (ckpt / "config.json").write_text(json.dumps({"format": "gpt3lab-checkpoint", "version": 1,
                                                      "model": model, "train": {"batch_tokens": bt}}))
        (ckpt / "model.safetensors").write_bytes(b"")
    a = _json(capsys, ["size", str(ckpt.parent / "step_00000100"), "--json"])
    b = _json(capsys, ["size", str(tmp_path / "run"), "--json"])
    assert a["params"] == b["params"] == sizing.param_counts(ModelConfig(**model))
    assert (a["steps"], b["steps"]) == (int(300e9 / 640), int(300e9 / 1280))
    assert main(["size", str(tmp_path)]) == 2  # neither a checkpoint nor a run dir
    assert "holds no checkpoints/step_*" in capsys.readouterr().err


@pytest.mark.parametrize("argv, needle", [
    (["gpt3-175b", "--gpu", "tpu9"], "v100, a100, h100"),
    (["gpt3-huge"], "unknown preset 'gpt3-huge'"),
    (["missing/config.json"], "does not exist"),
    # out-of-range --tokens/--mfu/--world-size/...: refused by argparse (tests/test_cli_options.py)
    ([], "--all"),
])
def test_cli_bad_input_fails_cleanly(argv, needle, capsys):
    assert main(["size", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gpt3lab: error:") and needle in err and "Traceback" not in err


def test_cli_bad_json_files(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert main(["size", str(bad)]) == 2
    assert "not a readable JSON" in capsys.readouterr().err
    bad.write_text(json.dumps({"n_layers": 3}))
    assert main(["size", str(bad)]) == 2
    assert "unknown key(s) n_layers" in capsys.readouterr().err


def test_unknown_gpu_is_config_error():
    with pytest.raises(ConfigError, match="known GPUs: v100, a100, h100"):
        sizing.get_gpu("k80")
