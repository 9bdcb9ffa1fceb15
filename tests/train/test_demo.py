import math

import torch

from gpt3lab.config import ModelConfig
from gpt3lab.data import WindowLoader, load_data_tokenizer
from gpt3lab.demo import split_bpb
from gpt3lab.model import GPT


def test_split_bpb_is_mean_token_loss_over_bytes(tiny_data):
    tok = load_data_tokenizer(tiny_data)
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=tok.vocab_size, context=32, n_layer=1, d_model=32, n_head=2)).eval()
    val = WindowLoader(tiny_data, "val", 32, 4)
    losses = []
    with torch.no_grad():
        for x, y in val.sequential_batches(1):
            losses.append(model(x, y)[1].item())
    want = sum(losses) / len(losses) * val.num_tokens / (val.num_bytes * math.log(2))
    assert math.isclose(split_bpb(model, val, batch_size=3), want, rel_tol=1e-5)


def test_fit_steps_times_on_the_device_train_uses_and_fits_the_probed_costs(tiny_data, monkeypatch):
    import gpt3lab.train.budget as budget
    import gpt3lab.train.distributed as distributed
    import gpt3lab.train.loop as loop
    from gpt3lab.demo import fit_steps

    seen = {}

    class FakeTrainer:
        def __init__(self, model, mcfg, cfg, train_data, eval_data=None, **kw):
            seen.update(device=kw.get("device"), eval_data=eval_data, out_dir=kw["info"].out_dir)

    asked = []
    monkeypatch.setattr(distributed, "local_device", lambda req: asked.append(req) or torch.device("meta"))
    monkeypatch.setattr(loop, "Trainer", FakeTrainer)
    costs = budget.Costs(step_s=0.5, eval_s=2.0, save_s=1.0, warmup_s=3.0)
    monkeypatch.setattr(budget, "probe", lambda tr, **kw: costs)
    steps = fit_steps(tiny_data, ["context=32", "device=auto", "max_steps=10000"], budget_s=100.0)
    assert asked == ["auto"] and seen["device"] == torch.device("meta")
    assert seen["eval_data"] is not None and not seen["out_dir"].exists()   # the probe's scratch dir is gone
    # demo preset: eval every 200, save every 400 -> only the final eval and save: (95 - 3 - 2 - 1) / 0.5
    assert steps == 178


def test_demo_replaces_only_its_own_earlier_run(tmp_path):
    import pytest

    from gpt3lab.demo import DEMO_MARKER, clear_previous_demo
    from gpt3lab.errors import UserError

    real = tmp_path / "real"                       # a user's training run: never deleted
    real.mkdir()
    (real / "log.jsonl").write_text("{}\n")
    with pytest.raises(UserError, match=str(real)):
        clear_previous_demo(real)
    assert (real / "log.jsonl").read_text() == "{}\n"

    demo = tmp_path / "demo"                       # fresh: created with the marker
    clear_previous_demo(demo)
    assert sorted(p.name for p in demo.iterdir()) == [DEMO_MARKER]
    (demo / "log.jsonl").write_text("{}\n")        # an earlier demo run: replaced
    clear_previous_demo(demo)
    assert sorted(p.name for p in demo.iterdir()) == [DEMO_MARKER]


def test_native_bf16_is_read_from_the_cpu_flags(tmp_path):
    from gpt3lab.devices import cpu_has_native_bf16

    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512bw\n")
    assert not cpu_has_native_bf16(str(info))             # AVX-512 alone: bf16 is emulated (slower)
    info.write_text("processor\t: 0\nflags\t\t: fpu avx512f avx512_bf16 avx512_vnni\n")
    assert cpu_has_native_bf16(str(info))
    info.write_text("flags\t\t: fpu amx_bf16 amx_tile\n")
    assert cpu_has_native_bf16(str(info))
    assert not cpu_has_native_bf16(str(tmp_path / "missing"))   # not Linux: fp32


def test_the_demo_trains_bf16_only_on_a_native_bf16_cpu_unless_told(monkeypatch, capsys):
    import gpt3lab.devices as devices
    from gpt3lab.demo import precision_overrides

    monkeypatch.setattr(devices, "cpu_has_native_bf16", lambda: True)
    assert precision_overrides([]) == ["train.precision=bf16"]
    assert "bf16 autocast" in capsys.readouterr().out
    assert precision_overrides(["train.precision=fp32"]) == []          # the user's choice is kept
    assert precision_overrides(["precision=fp32"]) == []
    monkeypatch.setattr(devices, "cpu_has_native_bf16", lambda: False)
    assert precision_overrides([]) == []
