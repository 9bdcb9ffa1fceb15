"""gpt3lab: a complete, readable GPT-3 in PyTorch.

    import gpt3lab
    model, tokenizer = gpt3lab.load("runs/demo")          # any checkpoint, run, adapter or HF dir
    print(gpt3lab.generate_text(model, tokenizer, "ROMEO:", max_tokens=50))
"""
__version__ = "0.1.0"


def load(path, device="cpu", tokenizer=None, quantize="none", compile=False):
    """(model, tokenizer) from a checkpoint, a run directory (its newest checkpoint, or its LoRA adapter), an
    adapter directory, a LoRA checkpoint or a Hugging Face GPT-2 directory: see gpt3lab.loader.

    tokenizer: "gpt2" or a path, overriding (or supplying) the directory's own tokenizer.
    quantize: "none" (fp32 as trained), "bf16" or "int8" (CPU; per-channel int8 weights, for fast
    inference only): see gpt3lab.model.quant.
    compile: True (or a torch.compile mode) makes every decoding on this model (generate, the engine, inspect's
    step) run the compiled decode step: see gpt3lab.generate.core."""
    from gpt3lab.loader import load as _load
    from gpt3lab.model.quant import check_mode, prepare_for_inference

    check_mode(quantize)                 # a bad mode fails before the (slow) load
    model, tok = _load(path, device=device, tokenizer=tokenizer)
    if quantize != "none":
        prepare_for_inference(model, quantize)
    if compile:
        from gpt3lab.generate.core import compile_mode
        model.compile_mode = compile_mode(compile, model.transformer.wte.weight.device)
    return model, tok


def generate_text(model, tokenizer, prompt, **kwargs):
    """Convenience: generate a completion for `prompt` (see gpt3lab.generate.generate)."""
    from gpt3lab.generate import generate

    return generate(model, tokenizer, prompt, **kwargs).text
