"""gpt3lab distill: the KD loss, the loss hook of the one loop, the teacher's checks, init from the teacher."""
import copy
import json
from dataclasses import asdict

import pytest
import torch
import torch.nn.functional as F

import gpt3lab
from gpt3lab import checkpoint as ckpt_io
from gpt3lab.cli import main
from gpt3lab.config import ModelConfig, TrainConfig
from gpt3lab.data import WindowLoader, prepare
from gpt3lab.distill.cli import distill
from gpt3lab.distill.loss import KD_LOSSES, DistillLoss, kd_divergence
from gpt3lab.distill.teacher import init_from_teacher, layer_map, load_teacher
from gpt3lab.errors import ConfigError
from gpt3lab.model import GPT
from gpt3lab.model.lora import fingerprint
from gpt3lab.train.cli import train
from gpt3lab.train.loop import Trainer, read_log

from train_helpers import STUDENT


def _batch(n=2, t=32, vocab=300, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, vocab, (n, t), generator=g)
    return x, torch.roll(x, -1, dims=1)


# ---- the loss ---------------------------------------------------------------------------------------------
def test_kl_of_a_distribution_with_itself_is_zero_and_matches_the_definition():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(2, 5, 40, generator=g) * 3, torch.randn(2, 5, 40, generator=g) * 3
    for kind in KD_LOSSES:
        for temp in (0.5, 1.0, 4.0):
            assert kd_divergence(s, s, temp, kind).item() == 0.0
    ls, lt = F.log_softmax(s / 2, -1), F.log_softmax(t / 2, -1)
    forward = (lt.exp() * (lt - ls)).sum(-1)            # KL(teacher || student) per position
    reverse = (ls.exp() * (ls - lt)).sum(-1)            # KL(student || teacher)
    torch.testing.assert_close(kd_divergence(s, t, 2.0, "forward"), forward.mean())
    torch.testing.assert_close(kd_divergence(s, t, 2.0, "reverse"), reverse.mean())
    assert not torch.allclose(forward.mean(), reverse.mean())
    mask = torch.tensor([[1, 1, 0, 1, 0], [0, 0, 0, 1, 1]], dtype=torch.bool)      # positions that count
    torch.testing.assert_close(kd_divergence(s, t, 2.0, "forward", mask), forward[mask].mean())


def test_kl_between_a_model_and_itself_is_zero(teacher):
    model, _ = gpt3lab.load(teacher)
    x, y = _batch()
    for kind in KD_LOSSES:
        loss, parts = DistillLoss(copy.deepcopy(model), alpha=0.7, temperature=2.0, kind=kind)(model, x, y)
        assert parts["kd_loss"].item() == 0.0
        assert loss.item() == pytest.approx(0.3 * parts["ce_loss"].item(), rel=1e-6)
        assert parts["ce_loss"].item() == pytest.approx(model(x, y)[1].item(), rel=1e-6)


@pytest.mark.parametrize("precision", ["bf16", "int8"])
def test_a_cheaper_teacher_gives_nearly_the_same_loss(teacher, precision):
    exact, _, digest, _ = load_teacher(teacher)
    cheap, _, digest2, _ = load_teacher(teacher, precision)
    assert digest2 == digest                            # the fingerprint is of the weights as stored
    student = GPT(ModelConfig(**{**asdict(exact.config), "n_layer": 1}))
    x, y = _batch()
    _, ref = DistillLoss(exact, teacher_precision="fp32")(student, x, y)
    _, got = DistillLoss(cheap, teacher_precision=precision)(student, x, y)
    assert got["kd_loss"].item() == pytest.approx(ref["kd_loss"].item(), rel=0.05)
    assert got["kd_loss"].item() != ref["kd_loss"].item()      # it did run at another precision


# ---- through the one loop ---------------------------------------------------------------------------------
def test_alpha_zero_equals_a_plain_train_run_bit_for_bit(tiny_data, teacher, tmp_path):
    kw = dict(preset="tiny", max_steps=10, progress=False, overrides=STUDENT)
    train(tiny_data, tmp_path / "plain", **kw)
    distill(teacher, tiny_data, tmp_path / "kd0", alpha=0.0, **kw)
    distill(teacher, tiny_data, tmp_path / "kd", alpha=0.5, **kw)
    plain, kd0, kd = (read_log(tmp_path / r) for r in ("plain", "kd0", "kd"))
    for key in ("loss", "val_loss", "grad_norm", "lr"):
        assert [r.get(key) for r in kd0] == [r.get(key) for r in plain]       # exact float equality
    assert [r["ce_loss"] for r in kd0] == [r["loss"] for r in plain]
    assert all("kd_loss" not in r for r in kd0)        # alpha = 0: the teacher is never run (2.2x the steps/s)
    a, b = ckpt_io.load_state(ckpt_io.resolve(tmp_path / "plain")), ckpt_io.load_state(ckpt_io.resolve(tmp_path / "kd0"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # with weight on the teacher the run differs, and its logged loss is the weighted sum of the parts
    assert kd[-1]["val_loss"] != plain[-1]["val_loss"]
    assert kd[-1]["loss"] == pytest.approx(0.5 * kd[-1]["ce_loss"] + 0.5 * 4.0 * kd[-1]["kd_loss"], rel=1e-5)


def test_only_the_student_has_gradients_and_optimizer_state(tiny_data, teacher):
    t_model, _ = gpt3lab.load(teacher)
    before = {k: v.clone() for k, v in t_model.state_dict().items()}
    student = GPT(ModelConfig(**{**asdict(t_model.config), "n_layer": 1}))
    cfg = TrainConfig(batch_size=4, max_steps=3, warmup_steps=1, precision="fp32", peak_flops=1e12)
    trainer = Trainer(student, student.config, cfg, WindowLoader(tiny_data, "train", 32, 4), loss_fn=DistillLoss(t_model))
    record = trainer.fit()
    optimized = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    assert optimized == {id(p) for p in student.parameters()}
    assert len(trainer.optimizer.state) == len(optimized)
    assert all(p.grad is None and not p.requires_grad for p in t_model.parameters())
    assert all(torch.equal(v, before[k]) for k, v in t_model.state_dict().items())
    assert record["kd_loss"] > 0 and record["ce_loss"] > 0


def test_a_cli_run_leaves_the_teacher_as_it_was_and_writes_an_ordinary_checkpoint(tiny_data, teacher, tmp_path, capsys):
    digest = fingerprint(gpt3lab.load(teacher)[0])
    out = tmp_path / "run"
    args = ["distill", "--teacher", str(teacher), "--data", str(tiny_data), "--out", str(out), "--preset", "tiny",
            "--max-steps", "6", "--no-progress", "--alpha", "0.8", "--temperature", "1.5", "--kd-loss", "reverse",
            *(a for s in STUDENT for a in ("--set", s))]
    assert main(args) == 0
    assert fingerprint(gpt3lab.load(teacher)[0]) == digest
    ckpt = ckpt_io.resolve(out)
    cfg = ckpt_io.read_config(ckpt)
    assert cfg["distill"] == {"alpha": 0.8, "temperature": 1.5, "kd_loss": "reverse", "teacher_precision": "auto",
                              "init_from_teacher": False, "teacher": str(teacher.resolve()),
                              "teacher_fingerprint": digest}
    assert cfg["model"]["n_layer"] == 1
    opt_state, _ = ckpt_io.load_train_state(ckpt)
    names = {n for g in opt_state["param_groups"] for n in g["params"]}
    assert names == {n for n, _ in gpt3lab.load(out)[0].named_parameters()}      # the student's, nothing else
    assert (out / "log.csv").read_text().splitlines()[0].endswith(",ce_loss,kd_loss")
    assert main(["generate", str(out), "--prompt", "the king", "--max-tokens", "5", "--seed", "0"]) == 0
    assert main(["plot", str(out)]) == 0


def test_student_defaults_to_the_teachers_shape(tiny_data, teacher, tmp_path, capsys):
    assert main(["distill", "--teacher", str(teacher), "--data", str(tiny_data), "--out", str(tmp_path / "o"),
                 "--set", "model.n_layer=1", "--print-config"]) == 0
    printed = capsys.readouterr().out
    assert "n_layer: 1" in printed and "d_model: 64" in printed and "context: 32" in printed


# ---- user errors: one line, nothing written ---------------------------------------------------------------
def _err_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err
    return err


def test_tokenizer_mismatch_is_one_line_naming_both(tiny_data, teacher, tmp_path, capsys):
    other = tmp_path / "other"
    prepare([str(tiny_data.parent / "src")], other, "bpe:280", val_fraction=0.25, seed=0, progress=False)
    out = tmp_path / "run"
    assert main(["distill", "--teacher", str(teacher), "--data", str(other), "--out", str(out)]) == 2
    err = _err_line(capsys)
    t_name, d_name = gpt3lab.load(teacher)[1].name, json.loads((other / "prepare.json").read_text())["tokenizer"]
    assert t_name in err and d_name in err and t_name != d_name
    assert not out.exists()


@pytest.mark.parametrize("what", ["missing", "empty dir", "file", "data dir"])
def test_a_teacher_that_is_not_a_checkpoint_is_one_line(tiny_data, tmp_path, capsys, what):
    bad = {"missing": tmp_path / "nope", "empty dir": tmp_path / "empty", "file": tmp_path / "f.txt",
           "data dir": tiny_data}[what]
    (tmp_path / "empty").mkdir()
    (tmp_path / "f.txt").write_text("hello")
    out = tmp_path / "run"
    assert main(["distill", "--teacher", str(bad), "--data", str(tiny_data), "--out", str(out)]) == 2
    assert _err_line(capsys).startswith(f"gpt3lab: error: --teacher {bad}")
    assert not out.exists()


def test_resume_keeps_the_runs_settings_and_teacher(tiny_data, teacher, tmp_path, capsys):
    own = tmp_path / "teacher"
    ckpt_io.save_checkpoint(own, *(lambda m, t: (m, m.config, t))(*gpt3lab.load(teacher)))
    out = tmp_path / "run"
    distill(own, tiny_data, out, preset="tiny", max_steps=2, progress=False, overrides=STUDENT)
    capsys.readouterr()
    base = ["distill", "--out", str(out), "--resume", "--max-steps", "3", "--no-progress"]
    assert main([*base, "--alpha", "0.9"]) == 2
    assert "--alpha 0.9 (the run's: 0.5)" in _err_line(capsys)
    assert main([*base, "--teacher", str(teacher)]) == 2
    assert "--teacher" in _err_line(capsys)
    assert main([*base, "--alpha", "0.5", "--teacher", str(own)]) == 0         # repeating them is fine
    assert read_log(out)[-1]["step"] == 3
    capsys.readouterr()
    model, tok = gpt3lab.load(own)                      # the teacher changes under the run
    with torch.no_grad():
        model.transformer.wte.weight.mul_(2)
    ckpt_io.save_checkpoint(tmp_path / "t2", model, model.config, tok)
    (own / "model.safetensors").unlink()
    (tmp_path / "t2" / "model.safetensors").rename(own / "model.safetensors")
    (tmp_path / "t2" / "model.safetensors.sha256").replace(own / "model.safetensors.sha256")
    assert main(["distill", "--out", str(out), "--resume", "--max-steps", "4", "--no-progress"]) == 2
    assert "not the one the run started with" in _err_line(capsys)


def test_each_kind_of_run_resumes_only_with_its_own_command(tiny_data, teacher, tmp_path, capsys):
    train(tiny_data, tmp_path / "plain", preset="tiny", max_steps=1, progress=False, overrides=STUDENT)
    distill(teacher, tiny_data, tmp_path / "kd", preset="tiny", max_steps=1, progress=False, overrides=STUDENT)
    capsys.readouterr()
    assert main(["distill", "--out", str(tmp_path / "plain"), "--resume"]) == 2
    assert "not a distillation checkpoint" in _err_line(capsys)
    assert main(["train", "--out", str(tmp_path / "kd"), "--resume"]) == 2          # not without its teacher
    assert f"resume it with `gpt3lab distill --out {tmp_path / 'kd'} --resume`" in _err_line(capsys)


def test_student_windows_longer_than_the_teachers_context_are_refused(tiny_data, teacher, tmp_path, capsys):
    args = ["distill", "--teacher", str(teacher), "--data", str(tiny_data), "--out", str(tmp_path / "run"),
            "--preset", "tiny", "--max-steps", "1", "--no-progress", "--set", "model.context=64"]
    assert main(args) == 2
    assert "longer than the teacher's context of 32; set model.context=32" in _err_line(capsys)


def test_a_teacher_with_a_padded_vocabulary_is_compared_on_the_shared_ids(teacher):
    model, _ = gpt3lab.load(teacher)
    padded = GPT(ModelConfig(**{**asdict(model.config), "vocab_size": 320}))
    with torch.no_grad():
        for k, src in model.state_dict().items():
            padded.state_dict()[k][:len(src)].copy_(src)      # wte (and the tied lm_head): rows 300..319 stay new
    x, y = _batch()
    _, parts = DistillLoss(padded)(model, x, y)
    assert parts["kd_loss"].item() == 0.0       # the same model on the shared ids; the padding is left out


# ---- --init-from-teacher ----------------------------------------------------------------------------------
def test_layer_map_takes_every_other_layer_for_half_depth():
    assert layer_map(12, 6) == [0, 2, 4, 6, 8, 10]
    assert layer_map(4, 2) == [0, 2]
    assert layer_map(2, 2) == [0, 1] and layer_map(3, 1) == [0]


def test_init_from_teacher_copies_embeddings_and_every_other_layer(teacher):
    t_model, _ = gpt3lab.load(teacher)
    deep = ModelConfig(**{**asdict(t_model.config), "n_layer": 4})
    big = GPT(deep)                                     # a 4-layer "teacher" -> a 2-layer student
    student = GPT(ModelConfig(**{**asdict(deep), "n_layer": 2, "context": 16}))
    assert init_from_teacher(student, big.state_dict(), deep) == [0, 2]
    s, t = student.state_dict(), big.state_dict()
    for i, j in ((0, 0), (1, 2)):
        for rest in ("attn.c_attn.weight", "mlp.c_proj.bias", "ln_2.weight"):
            assert torch.equal(s[f"transformer.h.{i}.{rest}"], t[f"transformer.h.{j}.{rest}"])
    assert torch.equal(student.lm_head.weight, big.transformer.wte.weight)          # tied, copied once
    assert torch.equal(s["transformer.wpe.weight"], t["transformer.wpe.weight"][:16])
    narrow = GPT(ModelConfig(**{**asdict(deep), "n_layer": 2, "d_model": 32, "n_head": 2}))
    with pytest.raises(ConfigError, match="teacher's width.*d_model 64 vs 32"):
        init_from_teacher(narrow, big.state_dict(), deep)


def test_init_from_teacher_starts_the_student_where_the_teacher_is(tiny_data, teacher, tmp_path):
    kw = dict(preset="tiny", max_steps=1, progress=False, overrides=[*STUDENT, "model.n_layer=2", "lr=1e-9"])
    scratch = distill(teacher, tiny_data, tmp_path / "scratch", **kw)
    warm = distill(teacher, tiny_data, tmp_path / "warm", init_from_teacher=True, **kw)
    teacher_val = read_log(teacher)[-1]["val_loss"]
    assert warm["val_loss"] == pytest.approx(teacher_val, rel=0.05) and scratch["val_loss"] > teacher_val + 0.5
    assert read_log(tmp_path / "warm")[0]["kd_loss"] < 1e-3      # a copy of the teacher: no divergence yet
