"""gpt3lab: a complete, readable GPT-3 in PyTorch.

    import gpt3lab
    model, tokenizer = gpt3lab.load("runs/demo")          # checkpoint or run directory
    print(gpt3lab.generate_text(model, tokenizer, "ROMEO:", max_tokens=50))
"""
__version__ = "0.1.0"


def load(path, device="cpu", tokenizer=None):
    """Load a checkpoint (or the latest checkpoint of a run directory): returns (model, tokenizer).

    tokenizer: "gpt2" or a path, overriding (or supplying) the checkpoint's own tokenizer."""
    from gpt3lab.checkpoint import load as _load

    return _load(path, device=device, tokenizer=tokenizer)


def generate_text(model, tokenizer, prompt, **kwargs):
    """Convenience: generate a completion for `prompt` (see gpt3lab.generate.generate)."""
    from gpt3lab.generate import generate

    return generate(model, tokenizer, prompt, **kwargs).text
