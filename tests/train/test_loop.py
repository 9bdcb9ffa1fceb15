import math

import pytest
import torch

from gpt3lab.config import ModelConfig, TrainConfig
from gpt3lab.data import WindowLoader, load_data_tokenizer
from gpt3lab.model import GPT
from gpt3lab.train.loop import Trainer, param_groups
from gpt3lab.train.schedule import lr_at

TINY = dict(context=32, n_layer=2, d_model=32, n_head=4, attention_pattern="alternating", local_window=8)


class RowSource:
    """Batch source over fixed rows: next_batch(b) returns the next b rows (the loop's minimal contract)."""

    def __init__(self, x, y):
        self.x, self.y, self.pos = x, y, 0

    def next_batch(self, batch_size=None):
        b = batch_size or len(self.x)
        out = self.x[self.pos:self.pos + b], self.y[self.pos:self.pos + b]
        self.pos += b
        return out

    def state_dict(self):
        return {"pos": self.pos}

    def load_state_dict(self, d):
        self.pos = d["pos"]


def _model(vocab=64, seed=0):
    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=vocab, **TINY)
    return GPT(cfg), cfg


def test_loss_goes_down_on_tiny_corpus(tiny_data):
    tok = load_data_tokenizer(tiny_data)
    model, mcfg = _model(tok.vocab_size)
    cfg = TrainConfig(batch_size=8, max_steps=60, lr=3e-3, warmup_steps=5, eval_every=60, eval_batches=4,
                      precision="fp32", peak_flops=1e12)
    tr = Trainer(model, mcfg, cfg, WindowLoader(tiny_data, "train", 32, 8, seed=1),
                 WindowLoader(tiny_data, "val", 32, 8, seed=1))
    before = tr.evaluate()
    last = tr.fit()
    assert last["step"] == 60 and tr.tokens == 60 * 8 * 32
    # from ~ln(300) = 5.7 nats at init to well below on held-out documents
    assert before["val_loss"] > 5.0
    assert last["val_loss"] < before["val_loss"] - 1.5
    ev = tr.eval_data
    assert last["val_bpb"] == pytest.approx(last["val_loss"] * ev.num_tokens / (ev.num_bytes * math.log(2)))


def _grads_of_one_step(batch_size, batch_tokens, x, y):
    model, mcfg = _model()
    cfg = TrainConfig(batch_size=batch_size, batch_tokens=batch_tokens, max_steps=1, warmup_steps=0, peak_flops=1e12,
                      grad_clip=1e9, precision="fp32")
    tr = Trainer(model, mcfg, cfg, RowSource(x, y))
    captured = []
    tr.optimizer.step = lambda: captured.append({n: p.grad.clone() for n, p in model.named_parameters()})
    tr.train_step()
    return captured[0]


def test_grad_accumulation_equals_one_big_batch():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 64, (8, 32), generator=g)
    y = torch.randint(0, 64, (8, 32), generator=g)
    big = _grads_of_one_step(8, None, x, y)                  # one micro-batch of 8
    accum = _grads_of_one_step(2, 8 * 32, x, y)              # four micro-batches of 2
    assert big.keys() == accum.keys()
    for name in big:
        torch.testing.assert_close(accum[name], big[name], rtol=1e-5, atol=1e-7, msg=name)


def test_weight_decay_groups():
    model, _ = _model()
    decay, no_decay = param_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    d = {names[id(p)] for p in decay["params"]}
    nd = {names[id(p)] for p in no_decay["params"]}
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert d == {n for n, p in model.named_parameters() if p.dim() == 2 and "wte" not in n and "wpe" not in n}
    assert all(n.endswith(".c_attn.weight") or n.endswith(".c_proj.weight") or n.endswith(".c_fc.weight")
               for n in d)
    assert {"transformer.wte.weight", "transformer.wpe.weight", "transformer.ln_f.weight",
            "transformer.ln_f.bias"} <= nd
    assert len(d) + len(nd) == len(list(model.parameters()))   # tied lm_head counted once


def test_only_trainable_params_are_optimised():
    model, mcfg = _model()
    for n, p in model.named_parameters():
        p.requires_grad_("mlp" in n)                         # e.g. adapters only
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    groups = param_groups(model, 0.1)
    assert sum(len(g["params"]) for g in groups) == sum(1 for p in model.parameters() if p.requires_grad)
    x = torch.randint(0, 64, (4, 32))
    tr = Trainer(model, mcfg, TrainConfig(batch_size=4, max_steps=3, warmup_steps=0), RowSource(x.repeat(3, 1), x.repeat(3, 1)))
    tr.fit()
    for n, p in model.named_parameters():
        if n in frozen:
            assert torch.equal(p, frozen[n]), n


def test_masked_targets_and_ramp_in_the_loop():
    """-100 targets are ignored (fine-tuning data drops in) and the ramp grows tokens per step."""
    model, mcfg = _model()
    x = torch.randint(0, 64, (64, 32))
    y = x.clone()
    y[:, :16] = -100                                         # prompt half masked
    cfg = TrainConfig(batch_size=2, batch_tokens=8 * 32, ramp_tokens=6 * 64, ramp_start_tokens=64,
                      max_steps=4, warmup_steps=2, precision="fp32")
    tr = Trainer(model, mcfg, cfg, RowSource(x, y))
    steps = [tr.train_step() for _ in range(4)]
    assert [s["_step_tokens"] for s in steps] == [64, 128, 192, 256]   # 1, 2, 3, 4 micro-batches
    assert [s["lr"] for s in steps] == [lr_at(i, cfg) for i in range(4)]
    assert all(torch.isfinite(torch.tensor(s["loss"])) for s in steps)


def test_bf16_autocast_on_cpu_keeps_fp32_master_weights():
    model, mcfg = _model()
    x = torch.randint(0, 64, (4, 32))
    tr = Trainer(model, mcfg, TrainConfig(batch_size=4, max_steps=2, precision="bf16"), RowSource(x.repeat(2, 1), x.repeat(2, 1)))
    r = tr.train_step()
    assert tr.precision == "bf16" and torch.isfinite(torch.tensor(r["loss"]))
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert all(s["exp_avg"].dtype == torch.float32 for s in tr.optimizer.state.values())


def test_grad_clip_zero_means_no_clipping():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 64, (2, 32), generator=g)
    y = torch.randint(0, 64, (2, 32), generator=g)
    grads = {}
    for clip in (0.0, 1e9):
        model, mcfg = _model()
        cfg = TrainConfig(batch_size=2, max_steps=1, warmup_steps=0, peak_flops=1e12, grad_clip=clip,
                          precision="fp32")
        tr = Trainer(model, mcfg, cfg, RowSource(x, y))
        captured = []
        tr.optimizer.step = lambda: captured.append({n: p.grad.clone() for n, p in model.named_parameters()})
        stats = tr.train_step()
        grads[clip] = captured[0], stats["grad_norm"]
    (g0, n0), (g1, n1) = grads[0.0], grads[1e9]
    assert n0 == pytest.approx(n1) and n0 > 0
    for name in g1:
        torch.testing.assert_close(g0[name], g1[name], msg=name)


def test_negative_grad_clip_rejected():
    from gpt3lab.errors import ConfigError
    with pytest.raises(ConfigError, match="grad_clip"):
        TrainConfig(grad_clip=-1.0)


def test_time_budget_is_agreed_across_ranks():
    """Another rank running out of time stops this one too (else it waits forever in evaluate/save)."""
    from gpt3lab.train.distributed import Distributed
    from gpt3lab.train.loop import RunInfo

    class OtherRankOutOfTime(Distributed):
        def __init__(self):
            self.asked = []

        def any_rank(self, flag):
            self.asked.append(flag)
            return len(self.asked) >= 2          # the other rank's budget ends after step 2

    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 64, (20, 32), generator=g)
    model, mcfg = _model()
    dist = OtherRankOutOfTime()
    cfg = TrainConfig(batch_size=2, max_steps=10, warmup_steps=0, peak_flops=1e12, precision="fp32")
    tr = Trainer(model, mcfg, cfg, RowSource(x, x), info=RunInfo(progress=False, max_seconds=1e9), dist=dist)
    last = tr.fit()
    assert last["step"] == 2 and dist.asked == [False, False]
