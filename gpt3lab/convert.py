"""Import and export Hugging Face `transformers` GPT-2 checkpoints.

    gpt3lab convert --from-hf HF_DIR OUT_DIR        HF GPT-2 dir -> gpt3lab checkpoint
    gpt3lab convert --to-hf CHECKPOINT_DIR OUT_DIR   gpt3lab checkpoint -> dir GPT2LMHeadModel loads
    --tokenizer gpt2|PATH                            the tokenizer to store (default: the source's own)

The tokenizer travels as HF `tokenizers`' tokenizer.json (gpt3lab.hf_tokenizer), so AutoTokenizer loads
an exported directory and an import takes it back; bos/eos ids are the tokenizer's <|endoftext|>.

Our parameter names are GPT-2's, so a conversion is a key copy plus one detail: HF's GPT-2 uses
`Conv1D` layers that store their weight as (in, out), the transpose of `nn.Linear`'s (out, in), for
c_attn, c_proj (attention and MLP) and c_fc. Weights are read from `model.safetensors` (or its
sharded index); a `pytorch_model.bin` is read only with `torch.load(weights_only=True)`, which refuses
anything but tensors, so no user-supplied pickle code ever runs.
"""
from __future__ import annotations

import json
from pickle import UnpicklingError  # only to catch what torch.load(weights_only=True) refuses
import shutil
from dataclasses import replace
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from gpt3lab.checkpoint import read_json, write_dir_atomically
from gpt3lab.config import ModelConfig
from gpt3lab.errors import CheckpointError, ConfigError
from gpt3lab.model.build import build_model

CONV1D_SUFFIXES = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
# GELU variants equal to ours (the tanh approximation)
TANH_GELUS = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")
HF_ARCHS = ("GPT2LMHeadModel", "GPT2Model", "GPT2DoubleHeadsModel", "GPT2ForSequenceClassification")


# ---- reading an HF directory -------------------------------------------------------------------

def read_hf_config(hf_dir: str | Path) -> ModelConfig:
    """ModelConfig of an HF GPT-2 config.json; a clear CheckpointError for anything else."""
    hf_dir = Path(hf_dir)
    path = hf_dir / "config.json"
    if not hf_dir.is_dir():
        raise CheckpointError(f"{hf_dir}: no such directory; pass a Hugging Face GPT-2 model directory")
    if not path.is_file():
        raise CheckpointError(f"{hf_dir}: not a Hugging Face model directory (no config.json); "
                              f"pass the folder written by save_pretrained (config.json + model.safetensors)")
    hf = read_json(path, "not a Hugging Face model directory", "re-save the model with save_pretrained")
    if hf.get("format") == "gpt3lab-checkpoint":
        raise CheckpointError(f"{hf_dir} is already a gpt3lab checkpoint; to export it use "
                              f"`gpt3lab convert --to-hf {hf_dir} OUT_DIR`")
    archs = hf.get("architectures") or []
    if hf.get("model_type") != "gpt2" and not any(a in HF_ARCHS for a in archs):
        raise CheckpointError(f"{path}: unsupported architecture (model_type={hf.get('model_type')!r}, "
                              f"architectures={archs}); only GPT-2 (GPT2LMHeadModel) checkpoints convert")
    act = hf.get("activation_function", "gelu_new")
    if act not in TANH_GELUS:
        raise CheckpointError(f"{path}: activation_function={act!r} is not supported; gpt3lab uses "
                              f"GPT-2's tanh GELU ({', '.join(TANH_GELUS)})")
    if hf.get("scale_attn_by_inverse_layer_idx") or hf.get("scale_attn_weights") is False:
        raise CheckpointError(f"{path}: non-standard attention scaling (scale_attn_by_inverse_layer_idx / "
                              f"scale_attn_weights) is not supported")
    try:
        return ModelConfig(
            vocab_size=hf.get("vocab_size", 50257), context=hf.get("n_positions", hf.get("n_ctx", 1024)),
            n_layer=hf.get("n_layer", 12), n_head=hf.get("n_head", 12), d_model=hf.get("n_embd", 768),
            d_ff=hf.get("n_inner"), attention_pattern="dense", dropout=float(hf.get("resid_pdrop", 0.0)),
            layer_norm_eps=float(hf.get("layer_norm_epsilon", 1e-5)))
    except ConfigError as e:
        raise CheckpointError(f"{path}: {e}") from None


def read_hf_state(hf_dir: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of an HF dir: model.safetensors, its sharded index, or pytorch_model.bin (weights only)."""
    hf_dir = Path(hf_dir)
    single, index = hf_dir / "model.safetensors", hf_dir / "model.safetensors.index.json"
    try:
        if single.is_file():
            return load_file(str(single))
        if index.is_file():
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            return {k: v for s in shards for k, v in load_file(str(hf_dir / s)).items()}
        binary = hf_dir / "pytorch_model.bin"
        if binary.is_file():
            # weights_only: tensors and plain containers only, never arbitrary pickled objects
            state = torch.load(binary, map_location="cpu", weights_only=True)
            if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
                raise ValueError("expected a flat dict of tensors")
            return state
    except (SafetensorError, OSError, ValueError, KeyError, RuntimeError, UnpicklingError) as e:
        raise CheckpointError(f"{hf_dir}: cannot read the weights ({type(e).__name__}: {e}); "
                              f"the file is corrupt or not a plain tensor file") from None
    raise CheckpointError(f"{hf_dir}: no weights found (expected model.safetensors, "
                          f"model.safetensors.index.json or pytorch_model.bin)")


def hf_to_gpt3lab_state(state: dict[str, torch.Tensor], n_layer: int) -> dict[str, torch.Tensor]:
    """HF GPT-2 keys -> ours: add the "transformer." prefix if absent, drop the causal-mask buffers,
    transpose Conv1D weights, check the lm_head is tied."""
    out: dict[str, torch.Tensor] = {}
    for key, t in state.items():
        if key.endswith((".attn.bias", ".attn.masked_bias")):   # constant mask buffers, not weights
            continue
        if key == "lm_head.weight":
            continue
        name = key if key.startswith("transformer.") else "transformer." + key
        out[name] = t.t().contiguous() if name.endswith(CONV1D_SUFFIXES) else t
    head = state.get("lm_head.weight")
    wte = out.get("transformer.wte.weight")
    if head is not None and wte is not None and not torch.equal(head, wte):
        raise CheckpointError("the checkpoint's lm_head.weight differs from transformer.wte.weight "
                              "(untied embeddings); gpt3lab's GPT ties them, so it cannot load this model")
    return out


def hf_tokenizer(hf_dir: str | Path):
    """The tokenizer of an HF dir: its tokenizer.json (any byte-level BPE written by gpt3lab, or GPT-2's),
    else GPT-2's vocab.json + merges.txt; None when it holds no tokenizer files.

    A different vocab.json/merges.txt BPE raises: only GPT-2's is read in that older form.
    """
    from gpt3lab.hf_tokenizer import read_hf_tokenizer
    from gpt3lab.tokenizer import Tokenizer, gpt2_files

    hf_dir = Path(hf_dir)
    tok = read_hf_tokenizer(hf_dir)
    if tok is not None:
        return tok
    vocab, merges = hf_dir / "vocab.json", hf_dir / "merges.txt"
    if not vocab.is_file():
        return None
    enc_file, bpe_file = gpt2_files()
    same_vocab = json.loads(vocab.read_text(encoding="utf-8")) == json.loads(enc_file.read_text(encoding="utf-8"))
    same_merges = (not merges.is_file() or _merge_lines(merges) == _merge_lines(bpe_file))
    if not (same_vocab and same_merges):
        raise CheckpointError(f"{vocab}: a tokenizer other than GPT-2's; only GPT-2's vocabulary is "
                              f"imported (remove vocab.json/merges.txt to import the weights alone)")
    return Tokenizer.gpt2()


def hf_chat_template(hf_dir: str | Path) -> dict:
    """{"chat_template": ...} from an HF dir's tokenizer_config.json, or {} when it has none. HF's list of
    named templates is kept as it is (gpt3lab.chat.select_template picks one where it is used)."""
    try:
        tpl = json.loads((Path(hf_dir) / "tokenizer_config.json").read_text(encoding="utf-8")).get("chat_template")
    except (OSError, ValueError, AttributeError):
        return {}
    return {"chat_template": tpl} if isinstance(tpl, (str, list, dict)) else {}


def _merge_lines(path: Path) -> list[str]:
    return [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln and not ln.startswith("#version")]


def is_hf_dir(path: str | Path) -> bool:
    """A Hugging Face model directory: its config.json names a model_type."""
    p = Path(path) / "config.json"
    try:
        return p.is_file() and "model_type" in json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return False


def from_hf(hf_dir: str | Path, device: str | torch.device = "cpu"):
    """Build a gpt3lab GPT from an HF GPT-2 directory. Returns (model in eval mode, fp32; ModelConfig)."""
    cfg = read_hf_config(hf_dir)
    state = hf_to_gpt3lab_state(read_hf_state(hf_dir), cfg.n_layer)
    return build_model(cfg, state, str(hf_dir), device), cfg


def load_hf(hf_dir: str | Path, device: str | torch.device = "cpu"):
    """(model, tokenizer) of an HF GPT-2 dir; GPT-2's tokenizer when the dir has none and the vocab fits."""
    model, cfg = from_hf(hf_dir, device=device)
    tok = hf_tokenizer(hf_dir)
    if tok is None:
        if cfg.vocab_size != 50257:
            raise CheckpointError(f"{hf_dir}: no vocab.json and vocab_size {cfg.vocab_size} is not GPT-2's; "
                                  f"add GPT-2's vocab.json/merges.txt or convert with a tokenizer")
        from gpt3lab.tokenizer import Tokenizer
        tok = Tokenizer.gpt2()
    return model, tok


# ---- writing an HF directory -------------------------------------------------------------------

def check_exportable(cfg: ModelConfig, window_context: bool = False) -> None:
    """Raise unless HF's GPT-2 can represent `cfg` exactly (with window_context: up to local_window tokens)."""
    if cfg.attention_pattern != "dense" and not window_context:
        raise ConfigError(
            f"cannot export a model with attention_pattern={cfg.attention_pattern!r}: Hugging Face GPT-2 has "
            f"no banded (locally sparse) attention. Options: `convert --to-hf --window-context` exports it "
            f"exactly with n_positions=local_window={cfg.local_window} (banded = dense up to the band); or "
            f"train/fine-tune a dense model (--set model.attention_pattern=dense) for the full context")
    if cfg.d_attn != cfg.d_model:
        raise ConfigError(f"cannot export: attention width n_head*d_head={cfg.d_attn} differs from "
                          f"d_model={cfg.d_model}, which HF GPT-2 cannot represent")
    if not cfg.bias:
        raise ConfigError("cannot export a model with bias=False: HF GPT-2 always has biases")


def hf_config(cfg: ModelConfig, dtype: torch.dtype = torch.float32, eos_id: int | None = None) -> dict:
    """config.json for transformers' GPT2LMHeadModel; eos_id: the tokenizer's <|endoftext|> (also bos)."""
    return {
        "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
        "vocab_size": cfg.vocab_size, "n_positions": cfg.context, "n_ctx": cfg.context,
        "n_embd": cfg.d_model, "n_layer": cfg.n_layer, "n_head": cfg.n_head, "n_inner": cfg.d_ff,
        "activation_function": "gelu_new", "layer_norm_epsilon": cfg.layer_norm_eps,
        "resid_pdrop": cfg.dropout, "embd_pdrop": cfg.dropout, "attn_pdrop": cfg.dropout,
        "initializer_range": 0.02, "scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False, "tie_word_embeddings": True, "use_cache": True,
        "bos_token_id": eos_id, "eos_token_id": eos_id,
        "torch_dtype": str(dtype).removeprefix("torch."),
    }


def gpt3lab_to_hf_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Our state -> HF GPT-2 keys (Conv1D weights transposed to (in, out)); lm_head omitted (tied)."""
    from gpt3lab.checkpoint import model_state

    return {k: (v.t() if k.endswith(CONV1D_SUFFIXES) else v).contiguous()
            for k, v in model_state(model).items()}


def _export_tokenizer(model_or_ckpt, tokenizer):
    """The tokenizer to export: the one given, else the checkpoint's own, else None (weights only)."""
    from gpt3lab.checkpoint import load_tokenizer
    from gpt3lab.errors import UserError

    if tokenizer is not None or isinstance(model_or_ckpt, torch.nn.Module):
        return tokenizer
    try:
        return load_tokenizer(model_or_ckpt)
    except UserError:   # a checkpoint without tokenizer files exports weights alone
        return None


def _window_state(state: dict, cfg: ModelConfig) -> tuple[dict, ModelConfig]:
    """Positions cut to local_window: every layer (banded or dense) then sees the whole sequence."""
    n = min(cfg.local_window, cfg.context)
    state = {**state, "transformer.wpe.weight": state["transformer.wpe.weight"][:n].contiguous()}
    return state, replace(cfg, context=n, attention_pattern="dense")


def to_hf(model_or_ckpt, out_dir: str | Path, tokenizer=None, window_context: bool = False) -> Path:
    """Write an HF GPT-2 directory from a GPT or a checkpoint/run directory, written atomically:
    config.json, model.safetensors, generation_config.json and, when a tokenizer is known, tokenizer.json
    (+ tokenizer_config.json; GPT-2's also as vocab.json/merges.txt), so AutoTokenizer loads it.

    window_context: export a banded/alternating model exactly, with n_positions = local_window.
    """
    from gpt3lab.checkpoint import chat_template_of, load_model
    from gpt3lab.hf_tokenizer import write_hf_tokenizer

    model = model_or_ckpt if isinstance(model_or_ckpt, torch.nn.Module) else load_model(model_or_ckpt)
    tokenizer = _export_tokenizer(model_or_ckpt, tokenizer)
    cfg = getattr(model, "_orig_mod", model).config
    check_exportable(cfg, window_context)
    state = gpt3lab_to_hf_state(model)
    if cfg.attention_pattern != "dense":
        state, cfg = _window_state(state, cfg)
    dtype = state["transformer.wte.weight"].dtype
    check_vocab(tokenizer, cfg)
    eos = tokenizer.eot_id if tokenizer is not None else (50256 if cfg.vocab_size == 50257 else None)
    template = None if isinstance(model_or_ckpt, torch.nn.Module) else chat_template_of(model_or_ckpt)

    def fill(tmp: Path) -> None:
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(hf_config(cfg, dtype, eos), indent=2) + "\n")
        (tmp / "generation_config.json").write_text(json.dumps(
            {"bos_token_id": eos, "eos_token_id": eos, "pad_token_id": eos}, indent=2) + "\n")
        if tokenizer is not None:
            write_hf_tokenizer(tokenizer, tmp, cfg.context, template)
        if tokenizer is not None and getattr(tokenizer, "name", None) == "gpt2":
            from gpt3lab.tokenizer import gpt2_files

            enc, bpe = gpt2_files()
            shutil.copyfile(enc, tmp / "vocab.json")
            shutil.copyfile(bpe, tmp / "merges.txt")

    return write_dir_atomically(out_dir, fill)


def check_vocab(tokenizer, cfg: ModelConfig) -> None:
    """A tokenizer whose ids do not fit the model's embedding cannot go with it."""
    if tokenizer is not None and tokenizer.vocab_size > cfg.vocab_size:
        raise ConfigError(f"tokenizer {tokenizer.name!r} has {tokenizer.vocab_size} ids but the model's "
                          f"vocab_size is {cfg.vocab_size}; pass the tokenizer the model was trained with")


# ---- command line ------------------------------------------------------------------------------

def add_arguments(parser) -> None:
    way = parser.add_mutually_exclusive_group(required=True)
    way.add_argument("--from-hf", metavar="HF_DIR", help="import a Hugging Face GPT-2 directory, or a hub id "
                     "(gpt2, gpt2-medium, gpt2-large, gpt2-xl, org/name: downloaded first, see `gpt3lab download`)")
    way.add_argument("--to-hf", metavar="CHECKPOINT_DIR", help="export a gpt3lab checkpoint or run dir")
    parser.add_argument("out_dir", metavar="OUT_DIR", help="directory to write")
    parser.add_argument("--tokenizer", metavar="gpt2|PATH", default=None,
                        help="tokenizer to store with the weights (default: the source's own tokenizer files)")
    parser.add_argument("--window-context", action="store_true",
                        help="--to-hf of a banded/alternating model: exact export with n_positions = local_window")


def import_hf(hf_dir: str | Path, out_dir: str | Path, tokenizer=None, source: dict | None = None) -> dict:
    """Write the HF GPT-2 directory `hf_dir` as a gpt3lab checkpoint (with `tokenizer`, else the source's
    own); returns {out, n_layer, d_model, params, note}, note saying which tokenizer went with it."""
    from gpt3lab.checkpoint import save_checkpoint

    model, cfg = from_hf(hf_dir)
    tok = tokenizer or hf_tokenizer(hf_dir)
    check_vocab(tok, cfg)
    extra = {"source": source or {"hf_dir": str(hf_dir)}, **hf_chat_template(hf_dir)}
    save_checkpoint(out_dir, model, cfg, tokenizer=tok, extra=extra)
    note = f" (tokenizer {tok.name})" if tok is not None else (
        " (no tokenizer files in the source; weights only: add --tokenizer gpt2|PATH"
        + (", probably gpt2 for this 50,257-token vocabulary)" if cfg.vocab_size == 50257 else ")"))
    return {"out": str(out_dir), "n_layer": cfg.n_layer, "d_model": cfg.d_model, "params": model.num_params(),
            "note": note}


def run(args) -> int:
    from gpt3lab.checkpoint import resolve_tokenizer

    tok = resolve_tokenizer(args.tokenizer) if args.tokenizer else None
    if args.from_hf:
        from gpt3lab.hub import hub_id, resolve_model

        repo = hub_id(args.from_hf)       # a hub id (gpt2, org/name) is downloaded first
        s = import_hf(resolve_model(args.from_hf), args.out_dir, tok, {"hub_id": repo} if repo else None)
        print(f"imported {args.from_hf} -> {args.out_dir}: {s['n_layer']} layers, d_model {s['d_model']}, "
              f"{s['params'] / 1e6:.1f}M params{s['note']}")
    else:
        out = to_hf(args.to_hf, args.out_dir, tokenizer=tok, window_context=args.window_context)
        print(f"exported {args.to_hf} -> {out} (transformers: AutoModelForCausalLM.from_pretrained({str(out)!r}), "
              f"AutoTokenizer.from_pretrained({str(out)!r}))")
    return 0


__all__ = ["import_hf", "from_hf", "load_hf", "is_hf_dir", "to_hf", "read_hf_config", "read_hf_state", "hf_config", "check_exportable"]
