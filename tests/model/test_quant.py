"""Inference preparation modes: int8 logits close to fp32 on a small trained model, the mode rules, and the
int8 engine giving exactly what int8 generate() gives."""
import copy

import pytest
import torch
import torch.nn as nn

from gpt3lab.config import ModelConfig
from gpt3lab.model import GPT
from gpt3lab.model.quant import QuantizeError, mode_of, prepare_for_inference
from gpt3lab.tokenizer import Tokenizer

BYTES = Tokenizer({bytes([i]): i for i in range(256)}, name="bytes")
TEXT = ("ROMEO: But soft, what light through yonder window breaks? It is the east, and Juliet is the sun. "
        "JULIET: O Romeo, Romeo, wherefore art thou Romeo? Deny thy father and refuse thy name. ") * 4
# int8 bound on this model (measured 0.006: 0.068 on a range of 10.7): |int8 - fp32| <= 2% of the logits' range
LOGIT_BOUND = 0.02


@pytest.fixture(scope="module")
def trained():
    """A 2-layer byte model trained for 60 steps on TEXT (loss ~5.6 -> < 2), fp32."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)             # module fixtures run before conftest's one-thread fixture
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=257, context=64, n_layer=2, n_head=2, d_model=64))
    data = torch.tensor(BYTES.encode(TEXT))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for step in range(60):
        starts = torch.randint(0, len(data) - 65, (8,))
        batch = torch.stack([data[s:s + 65] for s in starts])                   # (8, 65)
        loss = model(batch[:, :-1], batch[:, 1:])[1]
        opt.zero_grad()
        loss.backward()
        opt.step()
    torch.set_num_threads(n)
    assert loss.item() < 2.5
    return model.eval()


def _logits(model, ids):
    with torch.inference_mode():
        return model(torch.tensor([ids]))[0][0].float()                          # (T, V)


def test_int8_logits_close_to_fp32_on_a_trained_model(trained):
    ids = BYTES.encode(TEXT[:60])
    ref = _logits(trained, ids)
    q = prepare_for_inference(copy.deepcopy(trained), "int8")
    assert isinstance(q.transformer.h[0].mlp.c_fc, torch.ao.nn.quantized.dynamic.Linear)
    assert isinstance(q.lm_head, torch.ao.nn.quantized.dynamic.Linear)       # the tied unembedding too
    out = _logits(q, ids)
    diff = (out - ref).abs().max().item()
    scale = (ref.max() - ref.min()).item()
    assert 0 < diff <= LOGIT_BOUND * scale, (diff, scale)
    assert (out.argmax(-1) == ref.argmax(-1)).float().mean() >= 0.95
    lp, lq = ref.log_softmax(-1), out.log_softmax(-1)
    nxt = torch.tensor(ids[1:])
    nll_fp32, nll_int8 = (-l[:-1].gather(1, nxt[:, None]).mean() for l in (lp, lq))
    assert abs(nll_int8 - nll_fp32) / nll_fp32 < 0.02


def test_bf16_logits_close_to_fp32(trained):
    ids = BYTES.encode(TEXT[:32])
    q = prepare_for_inference(copy.deepcopy(trained), "bf16")
    assert q.transformer.wte.weight.dtype == torch.bfloat16 and mode_of(q) == "bf16"
    ref, out = _logits(trained, ids), _logits(q, ids)
    assert (out - ref).abs().max() <= 0.03 * (ref.max() - ref.min())


def test_mode_rules(trained):
    m = copy.deepcopy(trained)
    with pytest.raises(QuantizeError, match="quantize='int4' is not a mode"):
        prepare_for_inference(m, "int4")
    prepare_for_inference(m)                            # none: fp32 layout, still trainable and quantizable
    assert mode_of(m) == "none" and all(isinstance(p, nn.Parameter) for p in m.parameters())
    prepare_for_inference(m, "int8")
    prepare_for_inference(m)                            # None keeps int8; int8 again is a no-op
    prepare_for_inference(m, "int8")
    assert mode_of(m) == "int8"
    with pytest.raises(QuantizeError, match="load the checkpoint again with quantize='none'"):
        prepare_for_inference(m, "none")


def test_load_with_quantize(tmp_path, trained):
    import gpt3lab
    from gpt3lab.checkpoint import save_checkpoint

    ckpt = save_checkpoint(tmp_path / "ck", trained, trained.config, BYTES)
    with pytest.raises(QuantizeError, match="'int3'"):
        gpt3lab.load(ckpt, quantize="int3")
    model, _ = gpt3lab.load(ckpt, quantize="int8")
    assert mode_of(model) == "int8"
    ids = BYTES.encode("ROMEO: But")
    torch.testing.assert_close(_logits(model, ids), _logits(prepare_for_inference(copy.deepcopy(trained), "int8"), ids))
    plain, _ = gpt3lab.load(ckpt)
    torch.testing.assert_close(_logits(plain, ids), _logits(trained, ids))   # "none": today's exact fp32 path


@pytest.mark.parametrize("sampling", [dict(temperature=0.0), dict(temperature=0.9, top_k=40, seed=7)])
def test_int8_engine_equals_int8_generate(trained, sampling):
    from gpt3lab.generate import generate
    from gpt3lab.generate.api import SamplingParams
    from gpt3lab.generate.engine import Engine

    q = prepare_for_inference(copy.deepcopy(trained), "int8")
    prompt = "JULIET: O Romeo"
    want = generate(q, BYTES, prompt, max_tokens=24, **sampling)
    engine = Engine(q, BYTES, kv_memory_bytes=8 << 20)
    try:
        params = SamplingParams(max_tokens=24, temperature=sampling["temperature"],
                                top_k=sampling.get("top_k", 0), seed=sampling.get("seed"))
        got = [t for ev in engine.submit(BYTES.encode(prompt), params) for t in ev.tokens]
    finally:
        engine.shutdown(cancel_running=True)
    assert mode_of(engine.model) == "int8"
    assert got == want.tokens
