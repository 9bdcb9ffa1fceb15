"""The GPU fast path (skipped without CUDA): bf16 autocast + fused AdamW steps, banded attention on CUDA."""
import pytest
import torch

from gpt3lab.config import TrainConfig
from gpt3lab.model import GPT, banded_attention, reference_attention
from gpt3lab.presets import get_preset
from gpt3lab.train.loop import Trainer

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


class FixedBatch:
    """The same (x, y) every step, so a few steps must lower its loss."""

    def __init__(self, vocab, T, B, seed=0):
        g = torch.Generator().manual_seed(seed)
        t = torch.randint(0, vocab, (B, T + 1), generator=g)
        self.x, self.y = t[:, :-1], t[:, 1:]

    def next_batch(self, batch_size):
        return self.x[:batch_size], self.y[:batch_size]

    def state_dict(self):
        return {}


def _trainer(device, precision):
    torch.manual_seed(0)
    mcfg = get_preset("tiny").model_config()
    cfg = TrainConfig(batch_size=4, precision=precision, lr=1e-3, warmup_steps=0, max_steps=20,
                      min_lr_ratio=1.0)
    return Trainer(GPT(mcfg), mcfg, cfg, FixedBatch(mcfg.vocab_size, mcfg.context, 4), device=device)


def test_bf16_fused_adamw_step_matches_fp32_cpu_and_learns():
    gpu, cpu = _trainer("cuda", "auto"), _trainer("cpu", "fp32")
    assert gpu.precision == "bf16" and gpu.optimizer.defaults["fused"] is True
    assert all(p.dtype == torch.float32 for p in gpu.model.parameters())     # fp32 master weights
    first_gpu, first_cpu = gpu.train_step(), cpu.train_step()
    # same init and batch: the bf16 forward agrees with fp32 to bf16 precision
    assert first_gpu["loss"] == pytest.approx(first_cpu["loss"], rel=2e-2)
    assert first_gpu["grad_norm"] == pytest.approx(first_cpu["grad_norm"], rel=5e-2)
    for pg, pc in zip(gpu.model.parameters(), cpu.model.parameters()):        # one fused AdamW update
        torch.testing.assert_close(pg.detach().cpu(), pc.detach(), atol=2e-3, rtol=0)
    # ten more steps: the bf16 run follows the fp32 CPU run's loss curve, which falls (measured on an H200:
    # 5.56 -> 4.57 for both; a fixed "falls by 20%" threshold was never met by fp32 either)
    losses = [gpu.train_step()["loss"] for _ in range(10)]
    ref = [cpu.train_step()["loss"] for _ in range(10)]
    assert losses == pytest.approx(ref, rel=3e-2)
    assert losses[-1] < 0.9 * first_gpu["loss"]


@pytest.mark.parametrize("T,W", [(300, 64), (1024, 256), (129, 48)])
def test_banded_attention_on_cuda_equals_reference(T, W):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 4, T, 64, generator=g).cuda().requires_grad_() for _ in range(3))
    w = torch.linspace(-1, 1, 64, device="cuda")
    y = banded_attention(q, k, v, W)
    yr = reference_attention(q, k, v, W)
    torch.testing.assert_close(y, yr, atol=1e-5, rtol=1e-4)
    grads = torch.autograd.grad((y * w).sum(), (q, k, v))
    grads_r = torch.autograd.grad((yr * w).sum(), (q, k, v))
    for a, b in zip(grads, grads_r):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    # bf16 on CUDA (the training path under autocast) stays close to the fp32 reference
    yb = banded_attention(*(t.detach().bfloat16() for t in (q, k, v)), W)
    torch.testing.assert_close(yb.float(), yr.detach(), atol=3e-2, rtol=3e-2)


@pytest.mark.parametrize("T,W", [(2048, 256), (300, 64)])
def test_banded_bf16_flex_path_equals_reference_with_grads(T, W):
    """16-bit CUDA banded attention (FlexAttention) against the fp32 oracle, forward and backward."""
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(2, 4, T, 64, generator=g).cuda() for _ in range(3))
    qb, kb, vb = (t.bfloat16().requires_grad_() for t in (q, k, v))
    qr, kr, vr = (t.clone().requires_grad_() for t in (q, k, v))
    y, yr = banded_attention(qb, kb, vb, W), reference_attention(qr, kr, vr, W)
    torch.testing.assert_close(y.float(), yr, atol=3e-2, rtol=3e-2)
    dy = torch.randn_like(yr)
    y.float().backward(dy)
    yr.backward(dy)
    for a, b in ((qb, qr), (kb, kr), (vb, vr)):
        torch.testing.assert_close(a.grad.float(), b.grad, atol=6e-2, rtol=6e-2)


def test_mfu_peak_of_a_known_gpu_is_its_datasheet_bf16_peak():
    from gpt3lab import sizing
    from gpt3lab.train import perf

    name = torch.cuda.get_device_name().lower()
    known = [g for key, g in sizing.GPUS.items() if key in name]
    peak = perf.peak_flops("cuda", torch.bfloat16)
    if known:
        assert peak == known[0].peak_flops
    assert perf.peak_flops("cuda", torch.float32) > 1e12       # measured at 4096^3, not 1024^3
