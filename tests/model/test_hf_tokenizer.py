"""HF interop of tokenizers: a custom-BPE model exported with tokenizer.json loads in transformers'
Auto classes and generates the same text; import takes the directory back; --tokenizer overrides."""
import json

import pytest
import torch

transformers = pytest.importorskip("transformers")

from gpt3lab import convert  # noqa: E402
from gpt3lab import load  # noqa: E402
from gpt3lab.checkpoint import save_checkpoint  # noqa: E402
from gpt3lab.cli import main  # noqa: E402
from gpt3lab.config import ModelConfig  # noqa: E402
from gpt3lab.errors import CheckpointError  # noqa: E402
from gpt3lab.generate import generate  # noqa: E402
from gpt3lab.hf_tokenizer import hf_tokenizer_dict, read_hf_tokenizer  # noqa: E402
from gpt3lab.model import GPT  # noqa: E402
from gpt3lab.tokenizer import Tokenizer  # noqa: E402

TEXT = ("First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n\n"
        "First Citizen:\nYou are all resolved rather to die than to famish?\n\n'tis 1234 times, we'll see.\n") * 3
SAMPLES = ["Before we proceed, héllo wörld 🎉  \n\n  x<|endoftext|>y", "  a   b\t\tc 'll 9876543", TEXT[:200]]


@pytest.fixture(scope="module")
def custom_ckpt(tmp_path_factory):
    d = tmp_path_factory.mktemp("bpe")
    tok = Tokenizer.train([TEXT], 300)
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=tok.vocab_size, context=64, n_layer=2, n_head=2, d_model=32)
    save_checkpoint(d / "ck", GPT(cfg).eval(), cfg, tokenizer=tok)
    return d / "ck", tok


def test_tokenizer_json_encodes_like_ours_for_custom_and_gpt2():
    from tokenizers import Tokenizer as HFTokenizer

    for tok in (Tokenizer.train([TEXT], 300), Tokenizer.gpt2()):
        hf = HFTokenizer.from_str(json.dumps(hf_tokenizer_dict(tok)))
        for s in SAMPLES + [TEXT]:
            assert hf.encode(s).ids == tok.encode(s), (tok.name, s[:30])
            assert hf.decode(tok.encode(s), skip_special_tokens=False) == s


def test_custom_bpe_round_trip_through_auto_classes(custom_ckpt, tmp_path):
    ckpt, tok = custom_ckpt
    assert main(["convert", "--to-hf", str(ckpt), str(tmp_path / "hf")]) == 0
    hf_cfg = json.loads((tmp_path / "hf/config.json").read_text())
    assert hf_cfg["eos_token_id"] == hf_cfg["bos_token_id"] == tok.eot_id == hf_cfg["vocab_size"] - 1
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    assert hf_tok.eos_token_id == tok.eot_id
    for s in SAMPLES:
        assert hf_tok(s)["input_ids"] == tok.encode(s)
    model, _ = load(ckpt)
    prompt = "First Citizen:\n"
    ids = torch.tensor([tok.encode(prompt)])
    with torch.no_grad():
        assert (model(ids)[0] - hf_model(ids).logits).abs().max().item() <= 1e-4
        out = hf_model.generate(ids, max_new_tokens=12, do_sample=False, attention_mask=torch.ones_like(ids))
    hf_text = hf_tok.decode(out[0, ids.shape[1]:])
    ours = generate(model, tok, prompt, max_tokens=12, temperature=0.0).text
    assert hf_text == ours
    # import takes the directory back: same tokenizer (ranks), same logits, the chat template too
    cfg_file = tmp_path / "hf/tokenizer_config.json"
    cfg_file.write_text(json.dumps({**json.loads(cfg_file.read_text()), "chat_template": "{{ messages }}"}))
    assert main(["convert", "--from-hf", str(tmp_path / "hf"), str(tmp_path / "back")]) == 0
    model2, tok2 = load(tmp_path / "back")
    assert tok2.ranks == tok.ranks and tok2.name == tok.name
    from gpt3lab.checkpoint import chat_template_of
    assert chat_template_of(tmp_path / "back") == "{{ messages }}"
    assert main(["convert", "--to-hf", str(tmp_path / "back"), str(tmp_path / "hf2")]) == 0
    assert json.loads((tmp_path / "hf2/tokenizer_config.json").read_text())["chat_template"] == "{{ messages }}"
    with torch.no_grad():
        assert torch.equal(model2(ids)[0], model(ids)[0])


def test_gpt2_tokenizer_json_imports_as_gpt2(tmp_path):
    d = tmp_path / "t"
    d.mkdir()
    (d / "tokenizer.json").write_text(json.dumps(hf_tokenizer_dict(Tokenizer.gpt2())))
    assert read_hf_tokenizer(d).name == "gpt2"
    data = json.loads((d / "tokenizer.json").read_text())
    data["model"]["merges"] = data["model"]["merges"][::-1]           # ids no longer follow merge order
    (d / "tokenizer.json").write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match="merge order"):
        read_hf_tokenizer(d)


def test_weights_only_import_needs_tokenizer_flag(tmp_path, capsys):
    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=50257, n_positions=32, n_embd=16, n_layer=1, n_head=2)).eval()
    hf.save_pretrained(tmp_path / "hf")
    assert main(["convert", "--from-hf", str(tmp_path / "hf"), str(tmp_path / "w")]) == 0
    assert "--tokenizer gpt2" in capsys.readouterr().out
    with pytest.raises(CheckpointError, match="probably --tokenizer gpt2"):
        load(tmp_path / "w")
    assert load(tmp_path / "w", tokenizer="gpt2")[1].name == "gpt2"          # the override
    assert main(["generate", str(tmp_path / "w"), "--prompt", "Hi", "--max-tokens", "2", "--tokenizer", "gpt2",
                 "--seed", "1"]) == 0
    assert main(["convert", "--from-hf", str(tmp_path / "hf"), str(tmp_path / "g"), "--tokenizer", "gpt2"]) == 0
    assert load(tmp_path / "g")[1].name == "gpt2"


def test_tokenizer_flag_too_small_model_and_cli_run_dir(custom_ckpt, tmp_path, capsys):
    ckpt, tok = custom_ckpt
    with pytest.raises(CheckpointError, match="50257 ids"):
        load(ckpt, tokenizer="gpt2")
    assert main(["tokenizer", "info", "--tokenizer", str(ckpt)]) == 0
    assert tok.name in capsys.readouterr().out


def test_alternating_export_names_options_and_window_export_is_exact(tmp_path, capsys):
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=60, context=32, n_layer=2, n_head=2, d_model=16,
                      attention_pattern="alternating", local_window=8)
    model = GPT(cfg).eval()
    save_checkpoint(tmp_path / "alt", model, cfg)
    assert main(["convert", "--to-hf", str(tmp_path / "alt"), str(tmp_path / "no")]) == 2
    err = capsys.readouterr().err
    assert "--window-context" in err and "attention_pattern=dense" in err
    assert main(["convert", "--to-hf", str(tmp_path / "alt"), str(tmp_path / "hf"), "--window-context"]) == 0
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    assert hf.config.n_positions == 8
    ids = torch.randint(0, 60, (2, 8), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (model(ids)[0] - hf(ids).logits).abs().max().item() <= 1e-4
