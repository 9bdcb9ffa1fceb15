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


def test_steps_within_budget_counts_evals_and_never_goes_negative():
    from gpt3lab.demo import steps_within

    # 0.1 s/step, an eval of 30 batches (~1 s) every 100 steps: 11 s per 100 steps, 1 s final eval
    assert steps_within(100.0, 0.1, 100, 30) == int((90.0 - 1.0) / 0.11)
    assert steps_within(100.0, 0.1, 0, 30) == int(89.0 / 0.1)         # eval_every 0: final eval only
    # however many steps the preset allows, the budget alone decides (the old formula went negative)
    assert steps_within(540.0, 0.26, 200, 20) > 1500
    assert steps_within(1.0, 5.0, 10, 20) == 1                        # at least one step


def test_fit_steps_times_on_the_device_train_uses(tiny_data, monkeypatch):
    import gpt3lab.train.distributed as distributed
    import gpt3lab.train.loop as loop
    from gpt3lab.demo import fit_steps

    seen = {}

    class FakeTrainer:
        def __init__(self, model, mcfg, cfg, train_data, eval_data=None, **kw):
            seen["device"] = kw.get("device")

        def train_step(self):
            return {}

    asked = []
    monkeypatch.setattr(distributed, "local_device", lambda req: asked.append(req) or torch.device("meta"))
    monkeypatch.setattr(loop, "Trainer", FakeTrainer)
    fit_steps(tiny_data, ["context=32", "device=auto"], budget_s=10.0, probe_steps=1)
    assert asked == ["auto"] and seen["device"] == torch.device("meta")


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
