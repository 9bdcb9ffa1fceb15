"""`gpt3lab finetune` end to end on a tiny base: exact LoRA resume, exports, full fine-tuning, user errors."""
import json

import pytest
import torch

import gpt3lab
from gpt3lab import checkpoint as ckpt_io
from gpt3lab.adapters import ADAPTER_CONFIG
from gpt3lab.cli import main
from gpt3lab.errors import CheckpointError, UserError
from gpt3lab.finetune import finetune
from gpt3lab.model import lora
from gpt3lab.train.loop import read_log

FAST = ["train.peak_flops=1e12", "train.batch_size=4", "train.save_every=3", "train.eval_every=3",
        "train.eval_batches=2", "train.device=cpu"]
X = torch.randint(0, 250, (2, 12), generator=torch.Generator().manual_seed(0))


def _lora(base, data, out, steps, resume=False, **kw):
    return finetune(base, data, out, method="lora", resume=resume, max_steps=steps, progress=False,
                    lora_cfg=lora.LoRAConfig(rank=4, dropout=0.1), overrides=FAST, **kw)


def test_lora_resume_gives_the_same_losses_as_uninterrupted(base_ckpt, add_data, tmp_path):
    _lora(base_ckpt, add_data, tmp_path / "a", 6)
    _lora(base_ckpt, add_data, tmp_path / "b", 3)
    s = _lora(None, None, tmp_path / "b", 6, resume=True)
    assert s["step"] == 6
    la, lb = read_log(tmp_path / "a"), read_log(tmp_path / "b")
    assert [r["step"] for r in lb] == list(range(1, 7))
    assert [r["loss"] for r in la] == [r["loss"] for r in lb]          # exact: dropout RNG restored too
    assert [r.get("val_loss") for r in la] == [r.get("val_loss") for r in lb]
    a, _ = gpt3lab.load(tmp_path / "a" / "adapter")
    b, _ = gpt3lab.load(tmp_path / "b")                        # run dir -> its adapter/
    assert all(torch.equal(v, lora.lora_state(b)[k]) for k, v in lora.lora_state(a).items())


def test_lora_resume_is_exact_with_the_measured_peak(base_ckpt, add_data, tmp_path):
    """peak_flops unset: measuring the MFU peak must not draw from the restored dropout RNG (issue 11)."""
    from gpt3lab.train import perf

    def run(out, steps, resume=False):
        perf._PEAK_CACHE.clear()           # as in a fresh process
        return finetune(None if resume else base_ckpt, None if resume else add_data, out, method="lora",
                        resume=resume, max_steps=steps, progress=False, lora_cfg=lora.LoRAConfig(rank=4, dropout=0.1),
                        overrides=[o for o in FAST if "peak_flops" not in o])
    run(tmp_path / "a", 6), run(tmp_path / "b", 3), run(tmp_path / "b", 6, resume=True)
    assert [r["loss"] for r in read_log(tmp_path / "a")] == [r["loss"] for r in read_log(tmp_path / "b")]


def test_lora_exports_merge_and_checkpoint_agree(base_ckpt, add_data, tmp_path):
    s = _lora(base_ckpt, add_data, tmp_path / "r", 3, merge=True)
    assert s["trainable_params"] < s["total_params"] * 0.25
    cfg = json.loads((tmp_path / "r" / "adapter" / ADAPTER_CONFIG).read_text())
    assert cfg["base"] == str(base_ckpt.resolve()) and cfg["rank"] == 4
    assert cfg["base_fingerprint"] == lora.fingerprint(ckpt_io.load_model(base_ckpt))
    with torch.no_grad():
        via_adapter = gpt3lab.load(tmp_path / "r" / "adapter")[0](X)[0]
        via_ckpt = gpt3lab.load(ckpt_io.step_dir(tmp_path / "r", 3))[0](X)[0]
        merged = ckpt_io.load_model(tmp_path / "r" / "merged")(X)[0]         # a plain checkpoint
        base = ckpt_io.load_model(base_ckpt)(X)[0]
    assert torch.equal(via_adapter, via_ckpt)
    # load_model (plain GPT) on a LoRA training checkpoint/run: a clear pointer, not "unexpected lora_A"
    for path in (tmp_path / "r", ckpt_io.step_dir(tmp_path / "r", 3)):
        with pytest.raises(CheckpointError, match=r"LoRA fine-tuning checkpoint.*gpt3lab\.load.*merged.*--merge"):
            ckpt_io.load_model(path)
    assert torch.allclose(merged, via_adapter, atol=1e-5) and not torch.allclose(merged, base, atol=1e-4)
    # the one-call loader (gpt3lab.load) recognises adapter dirs, LoRA run dirs and LoRA checkpoints
    with torch.no_grad():
        for path in (tmp_path / "r" / "adapter", tmp_path / "r", ckpt_io.step_dir(tmp_path / "r", 3)):
            model, tok = gpt3lab.load(path)
            assert torch.equal(model(X)[0], via_adapter) and tok.vocab_size == model.config.vocab_size


def test_full_finetune_trains_every_weight_and_lowers_loss(base_ckpt, add_data, tmp_path):
    s = finetune(base_ckpt, add_data, tmp_path / "f", max_steps=12, progress=False,
                 overrides=FAST + ["train.lr=3e-3", "train.warmup_steps=2"])
    assert s["trainable_params"] == s["total_params"]
    log = read_log(tmp_path / "f")
    assert log[-1]["loss"] < log[0]["loss"] - 0.5
    new, base = ckpt_io.load_model(tmp_path / "f").state_dict(), ckpt_io.load_model(base_ckpt).state_dict()
    assert all(not torch.equal(new[k], base[k]) for k in base if k.endswith("c_attn.weight"))
    assert not (tmp_path / "f" / "adapter").exists()


def test_model_shape_cannot_change_but_dropout_can(base_ckpt, add_data, tmp_path):
    with pytest.raises(UserError, match="only model.dropout"):
        finetune(base_ckpt, add_data, tmp_path / "x", max_steps=1, progress=False,
                 overrides=FAST + ["model.n_layer=3"])
    s = finetune(base_ckpt, add_data, tmp_path / "y", max_steps=1, progress=False,
                 overrides=FAST + ["model.dropout=0.1"])
    assert s["model"]["dropout"] == 0.1


def test_resume_without_checkpoint_and_existing_run_are_user_errors(base_ckpt, add_data, tmp_path):
    with pytest.raises(CheckpointError, match="holds no checkpoint"):
        _lora(None, None, tmp_path / "none", 3, resume=True)
    _lora(base_ckpt, add_data, tmp_path / "r", 1)
    with pytest.raises(UserError, match="already holds a run"):
        _lora(base_ckpt, add_data, tmp_path / "r", 1)


@pytest.mark.parametrize("lines, args, fragment", [
    (['{"prompt": "1+1=", "completion": "2"}', '{"prompt": "2+2="'], [], "line 2: invalid JSON"),
    (['{"prompt": "1+1=", "completion": ""}'], [], "line 1: empty completion"),
    (['{"prompt": "' + "1+1=" * 40 + '", "completion": "2"}', '{"prompt": "1+1=", "completion": "2"}'],
     ["--strict"], "line 1: example is"),
    (['{"prompt": "1+1=", "completion": "2"}'] * 4, ["--method", "lora", "--lora-targets", "q_proj"],
     "unknown target"),
    (['{"prompt": "1+1=", "completion": "2"}'] * 4, ["--merge"], "--merge applies to --method lora"),
])
def test_cli_user_errors_exit_2_without_traceback(base_ckpt, tmp_path, capsys, lines, args, fragment):
    data = tmp_path / "d.jsonl"
    data.write_text("\n".join(lines) + "\n")
    rc = main(["finetune", "--from", str(base_ckpt), "--data", str(data), "--out", str(tmp_path / "o"),
               "--max-steps", "1", "--no-progress", *args])
    err = capsys.readouterr().err
    assert rc == 2 and fragment in err and "Traceback" not in err


def test_cli_reports_skipped_examples(base_ckpt, tmp_path, capsys):
    data = tmp_path / "d.jsonl"
    data.write_text('{"prompt": "' + "1+1=" * 40 + '", "completion": "2"}\n'
                    + '{"prompt": "1+1=", "completion": "2"}\n' * 4)
    rc = main(["finetune", "--from", str(base_ckpt), "--data", str(data), "--out", str(tmp_path / "o"),
               "--max-steps", "1", "--no-progress", *(a for kv in FAST for a in ("--set", kv))])
    err = capsys.readouterr().err
    assert rc == 0 and "skipped 1 example(s) longer than the context (lines 1;" in err
