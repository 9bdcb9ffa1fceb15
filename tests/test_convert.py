"""HF GPT-2 import/export: equal logits and equal greedy tokens vs transformers' GPT2LMHeadModel."""
import json

import pytest
import torch

transformers = pytest.importorskip("transformers")
from safetensors.torch import load_file, save_file  # noqa: E402

from gpt3lab import convert  # noqa: E402
from gpt3lab.checkpoint import load_model, save_checkpoint  # noqa: E402
from gpt3lab.config import ModelConfig  # noqa: E402
from gpt3lab.errors import CheckpointError, ConfigError  # noqa: E402
from gpt3lab.model import GPT, KVCache  # noqa: E402


def _hf_model(**kw):
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=kw.get("vocab_size", 211), n_positions=64, n_embd=32,
                                  n_layer=3, n_head=4, n_inner=kw.get("n_inner"), resid_pdrop=0.0,
                                  embd_pdrop=0.0, attn_pdrop=0.0)
    m = transformers.GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():   # non-trivial biases and LayerNorm affine, so a wrong transpose shows
        for n, p in m.named_parameters():
            if "ln_" in n or n.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
    return m


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("hf")
    _hf_model().save_pretrained(d)
    return d


def _ids(n=17, vocab=211, seed=1):
    return torch.randint(0, vocab, (2, n), generator=torch.Generator().manual_seed(seed))


def _hf_logits(d, ids):
    hf = transformers.GPT2LMHeadModel.from_pretrained(d).eval()
    with torch.no_grad():
        return hf(ids).logits


def test_import_logits_equal_transformers(hf_dir):
    model, cfg = convert.from_hf(hf_dir)
    assert (cfg.n_layer, cfg.d_model, cfg.n_head, cfg.context) == (3, 32, 4, 64)
    ids = _ids()
    with torch.no_grad():
        ours, _ = model(ids)
    assert (ours - _hf_logits(hf_dir, ids)).abs().max().item() <= 1e-4


def _greedy_ours(model, prompt, n):
    cache = KVCache(model.config, batch_size=prompt.shape[0], max_len=prompt.shape[1] + n)
    out, x = [], prompt
    with torch.no_grad():
        for _ in range(n):
            logits, _ = model(x, cache=cache, last_only=True)
            x = logits[:, -1].argmax(-1, keepdim=True)   # (B, 1)
            out.append(x)
    return torch.cat(out, dim=1)


def test_greedy_20_tokens_equal_transformers(hf_dir):
    model, _ = convert.from_hf(hf_dir)
    hf = transformers.GPT2LMHeadModel.from_pretrained(hf_dir).eval()
    prompt = _ids(9)
    with torch.no_grad():
        ref = hf.generate(prompt, max_new_tokens=20, do_sample=False, pad_token_id=0,
                          attention_mask=torch.ones_like(prompt))[:, prompt.shape[1]:]
    ours = _greedy_ours(model, prompt, 20)
    assert ref.shape == (2, 20)
    assert torch.equal(ours, ref)


def test_export_loads_in_transformers_with_equal_logits(tmp_path):
    torch.manual_seed(3)
    cfg = ModelConfig(vocab_size=199, context=48, n_layer=2, n_head=2, d_model=24, d_ff=40)
    model = GPT(cfg).eval()
    save_checkpoint(tmp_path / "ck", model, cfg)
    out = convert.to_hf(tmp_path / "ck", tmp_path / "hf")
    hf_cfg = json.loads((out / "config.json").read_text())
    assert hf_cfg["activation_function"] == "gelu_new" and hf_cfg["n_inner"] == 40
    ids = _ids(vocab=199)
    with torch.no_grad():
        ours, _ = model(ids)
    assert (ours - _hf_logits(out, ids)).abs().max().item() <= 1e-4


def test_round_trip_is_bit_exact_and_writes_gpt2_tokenizer(tmp_path, hf_dir):
    from gpt3lab.tokenizer import Tokenizer

    model, cfg = convert.from_hf(hf_dir)
    with pytest.raises(ConfigError, match="50257 ids but the model's vocab_size is 211"):
        convert.to_hf(model, tmp_path / "bad", tokenizer=Tokenizer.gpt2())      # ids would not fit
    convert.to_hf(model, tmp_path / "back")
    a, b = load_file(str(hf_dir / "model.safetensors")), load_file(str(tmp_path / "back/model.safetensors"))
    assert set(b) <= set(a)
    for k, v in b.items():
        assert torch.equal(a[k], v), k
    big = GPT(ModelConfig(vocab_size=50257, context=16, n_layer=1, n_head=2, d_model=16))
    convert.to_hf(big, tmp_path / "g", tokenizer=Tokenizer.gpt2())
    assert (tmp_path / "g/vocab.json").is_file() and (tmp_path / "g/merges.txt").is_file()
    # and the exported tokenizer files import back as GPT-2's tokenizer (tokenizer.json, or the older pair)
    assert convert.hf_tokenizer(tmp_path / "g").name == "gpt2"
    (tmp_path / "g/tokenizer.json").unlink()
    assert convert.hf_tokenizer(tmp_path / "g").name == "gpt2"


def test_prefix_absent_buffers_present_and_untied_head(tmp_path, hf_dir):
    state = load_file(str(hf_dir / "model.safetensors"))
    bare = {k.removeprefix("transformer."): v for k, v in state.items()}
    bare["h.0.attn.bias"] = torch.tril(torch.ones(1, 1, 64, 64))        # old checkpoints carry masks
    bare["h.0.attn.masked_bias"] = torch.tensor(-1e4)
    d = tmp_path / "bare"
    d.mkdir()
    (d / "config.json").write_text((hf_dir / "config.json").read_text())
    save_file(bare, str(d / "model.safetensors"))
    m1, _ = convert.from_hf(hf_dir)
    m2, _ = convert.from_hf(d)
    ids = _ids()
    with torch.no_grad():
        assert torch.equal(m1(ids)[0], m2(ids)[0])
    bare["lm_head.weight"] = bare["wte.weight"] + 1.0
    save_file(bare, str(d / "model.safetensors"))
    with pytest.raises(CheckpointError, match="untied"):
        convert.from_hf(d)


def test_pytorch_model_bin_loads_weights_only(tmp_path, hf_dir):
    d = tmp_path / "bin"
    d.mkdir()
    (d / "config.json").write_text((hf_dir / "config.json").read_text())
    torch.save(load_file(str(hf_dir / "model.safetensors")), d / "pytorch_model.bin")
    m, _ = convert.from_hf(d)
    ids = _ids()
    with torch.no_grad():
        assert (m(ids)[0] - _hf_logits(hf_dir, ids)).abs().max().item() <= 1e-4
    # a pickle carrying an arbitrary object is refused, not executed
    torch.save({"x": object()}, d / "pytorch_model.bin", _use_new_zipfile_serialization=True)
    with pytest.raises(CheckpointError, match="plain tensor"):
        convert.read_hf_state(d)


def test_clear_errors(tmp_path):
    with pytest.raises(CheckpointError, match="no config.json"):
        convert.from_hf(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "architectures": ["LlamaForCausalLM"]}))
    with pytest.raises(CheckpointError, match="unsupported architecture"):
        convert.from_hf(tmp_path)
    for bad in (dict(attention_pattern="alternating"), dict(d_head=4)):
        cfg = ModelConfig(vocab_size=50, context=16, n_layer=2, n_head=2, d_model=16, **bad)
        with pytest.raises(ConfigError, match="banded|attention width"):
            convert.to_hf(GPT(cfg), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_cli_import_then_load(tmp_path, hf_dir, capsys):
    from gpt3lab.cli import main

    assert main(["convert", "--from-hf", str(hf_dir), str(tmp_path / "ck")]) == 0
    model = load_model(tmp_path / "ck")
    ids = _ids()
    with torch.no_grad():
        assert (model(ids)[0] - _hf_logits(hf_dir, ids)).abs().max().item() <= 1e-4
    assert main(["convert", "--from-hf", str(tmp_path / "nope"), str(tmp_path / "x")]) == 2
    assert "no such directory" in capsys.readouterr().err


def test_cli_export_refuses_banded_and_exports_dense(tmp_path, capsys):
    from gpt3lab.cli import main

    for pattern in ("alternating", "dense"):
        cfg = ModelConfig(vocab_size=60, context=16, n_layer=2, n_head=2, d_model=16, attention_pattern=pattern)
        save_checkpoint(tmp_path / pattern, GPT(cfg), cfg)
    assert main(["convert", "--to-hf", str(tmp_path / "alternating"), str(tmp_path / "hf_a")]) == 2
    assert "no banded" in capsys.readouterr().err
    assert not (tmp_path / "hf_a").exists()
    assert main(["convert", "--to-hf", str(tmp_path / "dense"), str(tmp_path / "hf_d")]) == 0
    hf = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "hf_d")
    assert hf.config.n_layer == 2 and hf.config.vocab_size == 60
