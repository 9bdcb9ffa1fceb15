"""Hugging Face Hub ids -> local model directories (the path behind `gpt3lab download` and every hub id).

The files come from the Hugging Face Hub through `huggingface_hub.snapshot_download`: only safetensors
weights, config and tokenizer files (never pickles), into the Hub's own cache (`HF_HOME` / `HF_HUB_CACHE`),
so a second download is free and an interrupted one resumes: files already complete are kept, and a
connection cut mid-file is resumed with an HTTP Range request. `HF_TOKEN` (gated or private models) and
`HF_ENDPOINT` (a mirror) are honoured. `gpt3lab download` (download.py) then runs the one converter.

A hub id also works wherever a model directory does (`serve gpt2`, `generate gpt2`, `convert --from-hf gpt2
OUT`): `resolve_model(spec)` keeps an existing local path and downloads anything else that names a hub model.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from gpt3lab.errors import CheckpointError

# the short names nanoGPT's from_pretrained takes; the Hub keeps OpenAI's GPT-2s under openai-community/
ALIASES = {name: f"openai-community/{name}" for name in ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")}
# what a GPT-2 import reads: safetensors weights (single or sharded), config, tokenizer; never *.bin pickles
ALLOW_PATTERNS = ["*.safetensors", "*.safetensors.index.json", "config.json", "generation_config.json",
                  "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt"]
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]{0,95}/[\w.-]{1,96}")
LOCAL_HINT = ("to use a model you already have, save it with save_pretrained and run "
              "`gpt3lab convert --from-hf HF_DIR OUT_DIR`")


def hub_id(spec: str | os.PathLike) -> str | None:
    """The hub repository `spec` names, or None when it is (or could only be) a local path.

    An existing path is always local. Otherwise the GPT-2 names (`gpt2`, `gpt2-xl`, ...) and `org/name` ids
    are hub ids, unless `org` is an existing local directory (then `runs/demo` is a missing local run)."""
    s = str(spec)
    if Path(s).exists():
        return None
    if s in ALIASES:
        return ALIASES[s]
    if s.startswith("hf://"):
        s = s[len("hf://"):]
    elif Path(s.split("/")[0]).is_dir():
        return None
    return s if _HUB_ID.fullmatch(s) and ".." not in s else None


def resolve_model(spec: str | os.PathLike, progress: bool = True) -> Path:
    """A local model directory for `spec`: the path itself, or the hub snapshot of the model it names."""
    repo = hub_id(spec)
    return Path(spec) if repo is None else snapshot(repo, progress=progress)


def _cache_dir() -> str | None:
    """The hub cache, read from the environment now (huggingface_hub reads it once, at import)."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if os.environ.get("HF_HOME"):
        return str(Path(os.environ["HF_HOME"]) / "hub")
    return None


def snapshot(repo_id: str, revision: str | None = None, progress: bool = True) -> Path:
    """Download (or find in the cache) the GPT-2 files of `repo_id`; returns the snapshot directory.
    One CheckpointError line when the hub cannot be reached or does not have the model."""
    try:
        import huggingface_hub as hub
        from huggingface_hub import errors as hub_errors
        from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars
    except ModuleNotFoundError:
        raise CheckpointError(f"downloading {repo_id} needs huggingface_hub: pip install huggingface_hub; "
                              f"or {LOCAL_HINT}") from None
    endpoint = os.environ.get("HF_ENDPOINT") or None
    where = endpoint or "https://huggingface.co"
    quiet = not progress and not are_progress_bars_disabled()
    if quiet:
        disable_progress_bars()
    try:
        path = Path(hub.snapshot_download(repo_id, revision=revision, allow_patterns=ALLOW_PATTERNS,
                                          cache_dir=_cache_dir(), endpoint=endpoint))
    except hub_errors.RevisionNotFoundError:
        raise CheckpointError(f"{repo_id} has no revision {revision!r} on {where}; drop --revision or name a "
                              f"branch, tag or commit of it") from None
    except hub_errors.GatedRepoError:
        raise CheckpointError(f"{repo_id} is gated on {where}: accept its terms on the model page and set "
                              f"HF_TOKEN to a token of that account") from None
    except hub_errors.RepositoryNotFoundError:
        raise CheckpointError(f"{repo_id!r} is no local directory and no model on {where} (or a private one: set "
                              f"HF_TOKEN); check the path or id (e.g. gpt2, openai-community/gpt2-large); or "
                              f"{LOCAL_HINT}") from None
    except hub_errors.HFValidationError:
        raise CheckpointError(f"{repo_id!r} is not a valid hub id (org/name); {LOCAL_HINT}") from None
    except Exception as e:   # offline, hub down, connection cut: whatever the transport raised
        why = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise CheckpointError(f"cannot download {repo_id} from {where} ({type(e).__name__}: {why[:200]}); a rerun "
                              f"resumes where this one stopped; offline, {LOCAL_HINT}") from None
    finally:
        if quiet:
            enable_progress_bars()
    if not (path / "config.json").is_file() or not any(path.glob("*.safetensors")):
        raise CheckpointError(f"{repo_id} on {where} has no config.json + *.safetensors weights (gpt3lab never "
                              f"loads pickled .bin files); {LOCAL_HINT}")
    return path


__all__ = ["snapshot", "resolve_model", "hub_id", "ALIASES", "ALLOW_PATTERNS", "LOCAL_HINT"]
