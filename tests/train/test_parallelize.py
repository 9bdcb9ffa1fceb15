"""In-process checks of the pieces behind FSDP x TP and sharded checkpoints (the multi-process runs are in
test_distributed.py): the q/k/v split keeps the model's function, the split state views write through to
the fused tensors, a sharded checkpoint round-trips exactly in one process, bad layouts are clear errors."""
import pytest
import torch

from gpt3lab import checkpoint as ckpt_io
from gpt3lab import sizing
from gpt3lab.cli import main
from gpt3lab.config import ModelConfig, TrainConfig
from gpt3lab.errors import ConfigError
from gpt3lab.model import GPT
from gpt3lab.train import distributed, parallelize, sharded_checkpoint
from gpt3lab.train.cli import data_parallel_size
from gpt3lab.train.loop import make_optimizer

CFG = ModelConfig(vocab_size=96, context=32, n_layer=2, d_model=32, n_head=4, attention_pattern="alternating",
                  local_window=8)


def _model(seed=0):
    torch.manual_seed(seed)
    return GPT(CFG)


def test_split_qkv_keeps_the_logits_and_gradients():
    x = torch.randint(0, 96, (2, 32), generator=torch.Generator().manual_seed(1))
    fused, split = _model(), _model()
    parallelize.split_qkv(split)
    assert {n for n, _ in split.named_parameters() if "c_attn" in n} == {
        f"transformer.h.{i}.attn.c_attn.{p}.{w}" for i in range(2) for p in "qkv" for w in ("weight", "bias")}
    (a, la), (b, lb) = fused(x, x), split(x, x)
    torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-6)
    la.backward()
    lb.backward()
    g = split.transformer.h[0].attn.c_attn
    torch.testing.assert_close(torch.cat([g.q.weight.grad, g.k.weight.grad, g.v.weight.grad]),
                               fused.transformer.h[0].attn.c_attn.weight.grad, rtol=1e-5, atol=1e-7)


def test_split_state_views_write_through_to_the_fused_tensor():
    model = _model()
    sd = parallelize.split_qkv_state(model.state_dict())
    assert "transformer.h.1.attn.c_attn.k.weight" in sd and "transformer.h.1.attn.c_attn.weight" not in sd
    sd["transformer.h.1.attn.c_attn.k.weight"].fill_(7.0)
    w = model.transformer.h[1].attn.c_attn.weight
    assert (w[32:64] == 7).all() and not (w[:32] == 7).any() and not (w[64:] == 7).any()


def test_sharded_checkpoint_round_trips_exactly_in_one_process(tmp_path):
    model = _model()
    opt = make_optimizer(model, TrainConfig(), torch.device("cpu"))
    x = torch.randint(0, 96, (2, 32))
    model(x, x)[1].backward()
    opt.step()
    dest = ckpt_io.step_dir(tmp_path, 1)
    sharded_checkpoint.ShardedCheckpointer().save(
        dest, model, opt, lambda tmp: ckpt_io.write_config(tmp, CFG, None, {"train": {}}))
    assert ckpt_io.is_sharded(dest) and ckpt_io.list_checkpoints(tmp_path) == [dest]
    assert not list(dest.parent.glob(".tmp-*"))
    other = _model(seed=1)
    other_opt = make_optimizer(other, TrainConfig(), torch.device("cpu"))
    sharded_checkpoint.load(dest, other, other_opt)
    for (n, p), q in zip(model.named_parameters(), other.parameters()):
        assert torch.equal(p, q), n
        for k in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(opt.state[p][k], other_opt.state[q][k]), (n, k)
    assert other.lm_head.weight is other.transformer.wte.weight


def test_tp_split_params_counts_what_the_plan_shards():
    model = _model()
    parallelize.split_qkv(model)
    column = ("c_attn.q", "c_attn.k", "c_attn.v", "mlp.c_fc")
    n = sum(p.numel() for name, p in model.named_parameters()
            if name.endswith(".weight") and any(c + "." in name for c in column + ("attn.c_proj", "mlp.c_proj"))
            or name.endswith(".bias") and any(c + "." in name for c in column))
    assert sizing.tp_split_params(CFG) == n
    one, four = sizing.tp_state_bytes(CFG, 8, 1), sizing.tp_state_bytes(CFG, 8, 4)
    assert one["total"] == pytest.approx(sizing.state_bytes(CFG, 8, "fsdp")["total"])
    total = sizing.n_params(CFG)    # over all 8 GPUs: split params once, the rest once per TP rank
    assert 8 * four["total"] == pytest.approx(16 * (n + 4 * (total - n)))
    assert sizing.activation_bytes(CFG, tp=4) < sizing.activation_bytes(CFG)


def test_bad_tensor_parallel_layouts_are_clear_errors(monkeypatch, tmp_path, capsys):
    with pytest.raises(ConfigError, match="tensor_parallel=2 needs train.parallel=fsdp"):
        distributed.from_env("ddp", torch.device("cpu"), tensor_parallel=2)
    monkeypatch.setenv("WORLD_SIZE", "3")
    with pytest.raises(ConfigError, match="does not divide the 3 launched"):
        data_parallel_size(TrainConfig(tensor_parallel=2))
    with pytest.raises(ConfigError, match="tensor_parallel=0"):
        TrainConfig(tensor_parallel=0)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "x").write_text("")
    assert main(["export", str(tmp_path), str(tmp_path / "out")]) == 2
    assert "not empty" in capsys.readouterr().err


def test_a_single_file_optimizer_state_resumes_the_split_model_exactly(tmp_path):
    """The by-name optimizer state of a one-process checkpoint (fused c_attn) loaded into a parallelized
    (q, k, v split) model: the next update equals the fused model's (each split param its own step count)."""
    import copy

    x = torch.randint(0, 96, (2, 32), generator=torch.Generator().manual_seed(2))
    model = _model()
    opt = make_optimizer(model, TrainConfig(), torch.device("cpu"))
    model(x, x)[1].backward()
    opt.step()
    opt.zero_grad()
    torch.save(distributed.Distributed().optimizer_state(model, opt), tmp_path / "optimizer.pt")
    split = copy.deepcopy(model)
    parallelize.split_qkv(split)
    split_opt = make_optimizer(split, TrainConfig(), torch.device("cpu"))
    distributed.Distributed().load_optimizer_state(split, split_opt,
                                                   torch.load(tmp_path / "optimizer.pt", weights_only=True))
    for m, o in ((model, opt), (split, split_opt)):
        for _ in range(2):
            m(x, x)[1].backward()
            o.step()
            o.zero_grad()
    fused = dict(model.named_parameters())
    for name, p in split.named_parameters():
        if name.endswith("c_attn.k.bias"):   # its gradient is 0 up to rounding noise (softmax is shift-
            continue                         # invariant), which Adam's normalisation turns into steps
        if ".c_attn." in name:
            i = "qkv".index(name.split(".")[-2])
            want = fused[name.replace(f".c_attn.{name.split('.')[-2]}.", ".c_attn.")].chunk(3)[i]
        else:
            want = fused[name]
        torch.testing.assert_close(p, want, rtol=1e-6, atol=1e-7, msg=name)
