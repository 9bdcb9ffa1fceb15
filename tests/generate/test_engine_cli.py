"""`gpt3lab generate --prompt-file` runs the prompts as one engine batch; outputs equal single requests."""
import torch

from gpt3lab.checkpoint import load, save_checkpoint
from gpt3lab.cli import main
from gpt3lab.config import ModelConfig
from gpt3lab.generate import generate
from gpt3lab.model import GPT
from gpt3lab.tokenizer import Tokenizer


def test_prompt_file_lines_batch_equals_single_requests(tmp_path, capsys):
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=257, context=48, n_layer=2, n_head=2, d_model=32)
    model = GPT(cfg)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.3)
    tok = Tokenizer({bytes([i]): i for i in range(256)}, name="bytes")
    ckpt = save_checkpoint(tmp_path / "ckpt", model, cfg, tok)
    prompts = ["first one", "b", "a third, longer prompt", "x\\ny"]
    (tmp_path / "p.txt").write_text("\n".join(prompts) + "\n")
    assert main(["generate", str(ckpt), "--prompt-file", str(tmp_path / "p.txt"), "--max-tokens", "8",
                 "--temperature", "0"]) == 0
    out = capsys.readouterr().out
    model, tok = load(ckpt)
    want = "".join(f"=== prompt {i} sample 1 ===\n{generate(model, tok, p.replace(chr(92) + 'n', chr(10)), max_tokens=8, temperature=0).text}\n"
                   for i, p in enumerate(prompts, 1))
    assert out == want
