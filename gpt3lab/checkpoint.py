"""Checkpoint directories: self-describing, written atomically, never unpickled.

    CKPT/config.json        {"format": "gpt3lab-checkpoint", "version": 1, "model": {...}, ...}
    CKPT/model.safetensors  weights, GPT-2 key names; the tied lm_head is stored once (as wte)
    CKPT/model.safetensors.sha256  its SHA-256 (`sha256sum -c` format), verified on every load
    CKPT/tokenizer.json     the tokenizer's saved form (gpt3lab.tokenizer)
    CKPT/train_state/       optional: optimizer.pt (torch.save, loaded with weights_only=True) and
                            state.json (step, tokens seen, RNG states as integer lists, data-loader positions)
    CKPT/sharded/           instead of model.safetensors and optimizer.pt in checkpoints of sharded (FSDP/TP)
                            runs: one file per rank + SHA256SUMS, read only through train/dcp_files.py
                            (train/sharded_checkpoint.py); `gpt3lab export` makes the single-file checkpoint

A run directory holds checkpoints under RUN/checkpoints/step_NNNNNNN; `resolve` maps a run directory
to its newest complete checkpoint. A checkpoint is written into a temporary sibling directory and then
renamed into place, so an interrupted save leaves the previous checkpoint untouched.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from gpt3lab.config import ModelConfig, from_dict
from gpt3lab.errors import CheckpointError, UserError
from gpt3lab.model.build import TIED_KEY, build_model

FORMAT = "gpt3lab-checkpoint"
VERSION = 1


SHARDED = "sharded"


def is_sharded(path: str | Path) -> bool:
    """A checkpoint of a sharded run: CKPT/sharded/ holds torch.distributed.checkpoint files."""
    return (Path(path) / SHARDED / ".metadata").is_file()


def is_checkpoint(path: str | Path) -> bool:
    p = Path(path)
    return (p / "config.json").is_file() and ((p / "model.safetensors").is_file() or is_sharded(p))


def resolve(path: str | Path) -> Path:
    """A checkpoint dir, or a run dir -> its newest complete checkpoint. Clear error otherwise."""
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"{p}: no such checkpoint or run directory")
    if is_checkpoint(p):
        return p
    ckpts = list_checkpoints(p)
    if not ckpts:
        raise CheckpointError(f"{p}: not a checkpoint (needs config.json + model.safetensors) and holds no "
                              f"checkpoints/step_* directory; point at a checkpoint or a run directory")
    return ckpts[-1]


def read_json(path: str | Path, missing: str, fix: str) -> dict:
    """The JSON object in `path`; a CheckpointError naming the file when it is missing (`missing` says
    what that means), corrupt or not an object (`fix` says what to do)."""
    try:
        obj = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing; {missing}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: corrupt JSON ({e}); {fix}") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: not a JSON object; {fix}")
    return obj


def read_config(ckpt: str | Path) -> dict:
    path = Path(ckpt) / "config.json"
    cfg = read_json(path, f"is {ckpt} a gpt3lab checkpoint?", "restore the file or re-save the checkpoint")
    if cfg.get("format") != FORMAT or "model" not in cfg:
        raise CheckpointError(f"{path}: not a gpt3lab checkpoint config (format={cfg.get('format')!r}); "
                              f"for Hugging Face GPT-2 directories use `gpt3lab convert --from-hf`")
    return cfg


def model_state(model: torch.nn.Module, sd: dict | None = None) -> dict[str, torch.Tensor]:
    """State dict ready for safetensors: unwrapped names, tied lm_head dropped, contiguous tensors.

    sd: an already gathered state dict (FSDP: full tensors collected from the shards) instead of
    model.state_dict().
    """
    sd = model.state_dict() if sd is None else sd
    return {k.removeprefix("_orig_mod."): v.detach().contiguous() for k, v in sd.items() if not k.endswith(TIED_KEY)}


def write_dir_atomically(dest: str | Path, fill) -> Path:
    """Create `dest` by calling fill(tmpdir) on a temp sibling, then rename it into place.

    A crash before the rename leaves only a `.tmp-*` directory (ignored by `resolve`); an existing
    `dest` is replaced only after the new one is complete.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{dest.name}-", dir=dest.parent))
    try:
        fill(tmp)
        commit_dir(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def commit_dir(tmp: str | Path, dest: str | Path) -> None:
    """fsync every file of the complete directory `tmp`, then rename it to `dest` (replacing one)."""
    tmp, dest = Path(tmp), Path(dest)
    for f in tmp.rglob("*"):
        if f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
    if dest.exists():
        old = dest.with_name(f".old-{dest.name}-{os.getpid()}")
        os.replace(dest, old)
        os.replace(tmp, dest)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, dest)


def save_checkpoint(dest: str | Path, model: torch.nn.Module, model_cfg: ModelConfig, tokenizer=None,
                    extra: dict | None = None, fill_extra=None, weights: dict | None = None) -> Path:
    """Write a complete checkpoint dir atomically.

    extra: more top-level keys for config.json (e.g. {"train": {...}}).
    fill_extra(tmpdir): writes more files (the trainer's train_state/) into the same atomic directory.
    weights: the full state dict to write instead of model.state_dict() (gathered FSDP weights).
    """
    def fill(tmp: Path) -> None:
        save_weights(model_state(model, weights), tmp / "model.safetensors")
        write_config(tmp, model_cfg, tokenizer, extra)
        if fill_extra is not None:
            fill_extra(tmp)

    return write_dir_atomically(dest, fill)


def write_config(ckpt: str | Path, model_cfg: ModelConfig, tokenizer=None, extra: dict | None = None) -> None:
    """CKPT/config.json (+ the tokenizer's files): everything of a checkpoint but its weights."""
    from dataclasses import asdict

    cfg = {"format": FORMAT, "version": VERSION, "model": asdict(model_cfg), **(extra or {})}
    (Path(ckpt) / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    if tokenizer is not None:
        tokenizer.save(ckpt)


CHECKSUM_SUFFIX = ".sha256"


def save_weights(state: dict[str, torch.Tensor], path: str | Path) -> None:
    """Write a safetensors file and record its checksum next to it (PATH.sha256)."""
    save_file(state, str(path), metadata={"format": "pt"})
    record_checksum(path)


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    h, buf = hashlib.sha256(), bytearray(1 << 20)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            h.update(memoryview(buf)[:n])
    return h.hexdigest()


def record_checksum(path: str | Path) -> None:
    """PATH.sha256 in `sha256sum` format, so `sha256sum -c model.safetensors.sha256` checks it too."""
    path = Path(path)
    path.with_name(path.name + CHECKSUM_SUFFIX).write_text(f"{file_sha256(path)}  {path.name}\n")


def verify_checksum(path: str | Path) -> None:
    """CheckpointError when `path` no longer has the SHA-256 recorded at save (no record: nothing to check,
    e.g. checkpoints written before checksums existed)."""
    path = Path(path)
    record = path.with_name(path.name + CHECKSUM_SUFFIX)
    if not record.is_file():
        return
    want = (record.read_text().split() or [""])[0].lower()
    got = file_sha256(path)
    if got != want:
        raise CheckpointError(f"{path}: truncated or corrupt (SHA-256 {got[:16]}... differs from {want[:16]!r}... "
                              f"recorded in {record.name} at save); use an earlier checkpoint or re-save it")


def load_state(ckpt: str | Path) -> dict[str, torch.Tensor]:
    if is_sharded(ckpt):
        raise CheckpointError(f"{ckpt} is a sharded checkpoint (one file per training process); write its "
                              f"single-file form with `gpt3lab export {ckpt} OUT_DIR` and use OUT_DIR")
    path = Path(ckpt) / "model.safetensors"
    if not path.is_file():
        raise CheckpointError(f"{path}: missing; the checkpoint is incomplete")
    verify_checksum(path)
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: truncated or corrupt safetensors file ({e}); "
                              f"use an earlier checkpoint or re-save it") from None


def is_lora_checkpoint(path: str | Path) -> bool:
    """A training checkpoint of a LoRA fine-tune (config.json carries "lora"; weights hold base + adapters)."""
    p = Path(path)
    try:
        return (p / "model.safetensors").is_file() and "lora" in json.loads((p / "config.json").read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return False


def load_model(path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None):
    """The GPT of a plain checkpoint (or the newest one in a run dir). Users call gpt3lab.load."""
    ckpt = resolve(path)
    if is_lora_checkpoint(ckpt):   # base weights + lora_A/lora_B: not a plain GPT state dict
        raise CheckpointError(f"{ckpt} is a LoRA fine-tuning checkpoint (base + adapters); load it with "
                              f"gpt3lab.load({str(ckpt)!r}), or use the plain checkpoint in RUN/merged "
                              f"(written by `gpt3lab finetune --method lora --merge`)")
    cfg = from_dict(ModelConfig, read_config(ckpt)["model"], where=f"{ckpt}/config.json model")
    return build_model(cfg, load_state(ckpt), f"{ckpt}/model.safetensors", device, dtype=dtype)


def load_tokenizer(path: str | Path):
    """The tokenizer stored in a checkpoint (or a run's newest one); a CheckpointError saying what to
    pass (--tokenizer gpt2|PATH) when the checkpoint has none."""
    from gpt3lab.tokenizer import TOKENIZER_FILE, Tokenizer

    ckpt = resolve(path)
    if not (ckpt / TOKENIZER_FILE).is_file():
        vocab = read_config(ckpt)["model"].get("vocab_size")
        hint = " (its vocab_size is 50257: probably --tokenizer gpt2)" if vocab == 50257 else ""
        raise CheckpointError(f"{ckpt} has no tokenizer ({TOKENIZER_FILE}); pass --tokenizer gpt2|PATH{hint}, "
                              f"or store one with `gpt3lab convert --from-hf ... --tokenizer gpt2|PATH`")
    return Tokenizer.load(ckpt)


def resolve_tokenizer(spec):
    """A tokenizer from any spec a user may pass: "gpt2", a saved tokenizer file/dir, a data dir, an HF
    directory with tokenizer.json, or a checkpoint/run directory."""
    from gpt3lab.hf_tokenizer import read_hf_tokenizer
    from gpt3lab.tokenizer import TOKENIZER_FILE, load_tokenizer as load_spec

    p = Path(str(spec))
    if str(spec) == "gpt2" or not p.is_dir() or (p / TOKENIZER_FILE).is_file():
        return load_spec(spec)
    if (p / "tokenizer.json").is_file() and not is_checkpoint(p):
        return read_hf_tokenizer(p)
    return load_tokenizer(p)


def chat_template_of(path: str | Path) -> str | None:
    """The chat template stored in a checkpoint's config.json (None: base model, use the default); of HF's
    list of named templates, the "default" one (gpt3lab.chat.select_template)."""
    from gpt3lab.chat import select_template

    try:
        p = resolve(path)
        raw = read_config(p).get("chat_template")
    except CheckpointError:   # an adapter dir or HF dir: no gpt3lab config of its own
        return None
    return select_template(raw, f"{p}/config.json")


# ---------------------------------------------------------------------------------------------
# Run directories and training state (written by gpt3lab.train.loop)

TRAIN_STATE = "train_state"


def step_dir(run_dir: str | Path, step: int) -> Path:
    """RUN/checkpoints/step_NNNNNNN for optimizer step `step`."""
    return Path(run_dir) / "checkpoints" / f"step_{step:07d}"


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first (temp dirs of interrupted saves are not listed)."""
    d = Path(run_dir) / "checkpoints"
    return sorted((c for c in d.glob("step_*") if is_checkpoint(c)), key=lambda c: c.name) if d.is_dir() else []


def new_run_dir(run_dir: str | Path) -> Path:
    """The --out of a new run: refused (UserError) when it already holds one, so nothing is overwritten."""
    out = Path(run_dir)
    if out.exists() and ((out / "checkpoints").exists() or (out / "log.jsonl").exists()):
        raise UserError(f"--out {out} already holds a run; pass --resume to continue it or pick a new --out")
    return out


def resume_checkpoint(run_dir: str | Path) -> Path:
    """The checkpoint --resume continues from: the run's newest (CheckpointError when it has none)."""
    ckpts = list_checkpoints(run_dir)
    if not ckpts:
        raise CheckpointError(f"--resume: {run_dir} holds no checkpoint (checkpoints/step_*); drop --resume to "
                              f"start a new run there")
    return ckpts[-1]


def prune_checkpoints(run_dir: str | Path, keep_last: int) -> list[Path]:
    """Delete all but the newest `keep_last` checkpoints (and stale temp dirs); returns what was removed."""
    ckpts = list_checkpoints(run_dir)
    doomed = ckpts[:-keep_last] if keep_last > 0 else ckpts
    d = Path(run_dir) / "checkpoints"
    doomed += [p for p in d.glob(".tmp-*")] + [p for p in d.glob(".old-*")] if d.is_dir() else []
    for p in doomed:
        shutil.rmtree(p, ignore_errors=True)
    return doomed


def rng_state() -> dict:
    """Every RNG the loop draws from (dropout: torch CPU/CUDA), as JSON-safe integer lists."""
    import random

    state = {"torch": torch.get_rng_state().tolist(), "python": list(random.getstate()[1]),
             "python_version": random.getstate()[0], "python_gauss": random.getstate()[2]}
    if torch.cuda.is_available():
        state["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: dict) -> None:
    import random

    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    random.setstate((state["python_version"], tuple(state["python"]), state["python_gauss"]))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])


def save_train_state(ckpt_tmp: str | Path, optimizer: torch.optim.Optimizer | dict, state: dict) -> None:
    """Write CKPT/train_state/{optimizer.pt, state.json}; `state` must be JSON-serialisable.

    optimizer: an optimizer, or its state dict (the trainer passes the portable by-name form); None when the
    optimizer is saved elsewhere (sharded checkpoints).
    """
    d = Path(ckpt_tmp) / TRAIN_STATE
    d.mkdir(parents=True, exist_ok=True)
    if optimizer is not None:
        torch.save(optimizer if isinstance(optimizer, dict) else optimizer.state_dict(), d / "optimizer.pt")
    (d / "state.json").write_text(json.dumps({**state, "rng": rng_state()}) + "\n")


def validate_train_state(state: dict, where: str | Path) -> None:
    """CheckpointError naming the first bad field of a state.json (missing, wrong type, wrong RNG length)."""
    from pydantic import ValidationError

    try:
        _train_state_schema().model_validate(state)
    except ValidationError as e:
        err = e.errors()[0]
        field = ".".join(str(x) for x in err["loc"]) or "(top level)"
        raise CheckpointError(f"{where}: field {field}: {err['msg']}; the file is damaged or not written by "
                              f"gpt3lab: resume from an earlier checkpoint") from None


@functools.lru_cache(maxsize=1)
def _train_state_schema():
    """The pydantic model of state.json (built on first use: pydantic is imported lazily)."""
    from typing import Annotated

    from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt

    Byte, Word = Annotated[StrictInt, Field(ge=0, le=255)], Annotated[StrictInt, Field(ge=0, lt=2 ** 32)]
    n_torch = torch.get_rng_state().numel()

    class Rng(BaseModel):
        model_config = ConfigDict(extra="forbid")
        torch: Annotated[list[Byte], Field(min_length=n_torch, max_length=n_torch)]
        python: Annotated[list[Word], Field(min_length=625, max_length=625)]
        python_version: StrictInt
        python_gauss: StrictFloat | None
        cuda: list[list[Byte]] | None = None

    class TrainState(BaseModel):
        model_config = ConfigDict(extra="allow")     # later versions may add keys
        step: Annotated[StrictInt, Field(ge=0)]
        tokens: Annotated[StrictInt, Field(ge=0)]
        world_size: Annotated[StrictInt, Field(ge=1)] = 1
        train_data: dict
        eval_data: dict | None = None
        rng: Rng

    return TrainState


def load_train_state(ckpt: str | Path) -> tuple[dict, dict]:
    """(optimizer state_dict, state dict) of a checkpoint; CheckpointError when missing or corrupt."""
    d = Path(ckpt) / TRAIN_STATE
    if is_sharded(ckpt):         # the optimizer is in the shards (train/sharded_checkpoint.py)
        return None, read_json(d / "state.json", "the checkpoint is incomplete", "resume from an earlier checkpoint")
    if not (d / "state.json").is_file() or not (d / "optimizer.pt").is_file():
        raise CheckpointError(f"{ckpt} has no complete {TRAIN_STATE}/ (optimizer.pt + state.json); it can be "
                              f"loaded for inference but not resumed; start a new run from it instead")
    state = read_json(d / "state.json", "the checkpoint is incomplete", "resume from an earlier checkpoint")
    validate_train_state(state, d / "state.json")
    try:
        # weights_only=True: plain tensors and containers only, never arbitrary pickled objects
        opt = torch.load(d / "optimizer.pt", map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises RuntimeError / UnpicklingError / EOFError on bad files
        raise CheckpointError(f"{d}/optimizer.pt: truncated or corrupt ({type(e).__name__}); resume from an "
                              f"earlier checkpoint") from None
    return opt, state
