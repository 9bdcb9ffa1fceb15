"""`gpt3lab generate --prompt-file` runs the prompts as one engine batch; outputs equal single requests."""

from gpt3lab import load
from gpt3lab.checkpoint import save_checkpoint
from gpt3lab.cli import main
from gpt3lab.generate import generate

from gen_helpers import BYTES, tiny


def test_prompt_file_lines_batch_equals_single_requests(tmp_path, capsys):
    model = tiny(context=48, n_layer=2)
    ckpt = save_checkpoint(tmp_path / "ckpt", model, model.config, BYTES)
    prompts = ["first one", "b", "a third, longer prompt", "x\\ny"]
    (tmp_path / "p.txt").write_text("\n".join(prompts) + "\n")
    assert main(["generate", str(ckpt), "--prompt-file", str(tmp_path / "p.txt"), "--max-tokens", "8",
                 "--temperature", "0"]) == 0
    out = capsys.readouterr().out
    model, tok = load(ckpt)
    want = "".join(f"=== prompt {i} sample 1 ===\n{generate(model, tok, p.replace(chr(92) + 'n', chr(10)), max_tokens=8, temperature=0).text}\n"
                   for i, p in enumerate(prompts, 1))
    assert out == want
