"""`gpt3lab download gpt2|gpt2-medium|gpt2-large|gpt2-xl|HUB_ID --out DIR`: a pretrained GPT-2 in one step.

The hub snapshot (gpt3lab.hub: safetensors + config + tokenizer files only, cached, resumable, HF_TOKEN and
HF_ENDPOINT honoured) goes through the one HF GPT-2 converter (gpt3lab.convert.import_hf) into a gpt3lab
checkpoint. A local HF directory is converted the same way.
"""
from __future__ import annotations

import sys
from pathlib import Path

from gpt3lab.convert import import_hf
from gpt3lab.errors import CheckpointError
from gpt3lab.hub import hub_id, snapshot


def download(spec: str, out_dir: str | Path, revision: str | None = None, progress: bool = True) -> dict:
    """Download a GPT-2 from the hub (or take a local HF dir) and write it as a gpt3lab checkpoint."""
    repo = hub_id(spec)
    if repo is None and not Path(spec).is_dir():
        raise CheckpointError(f"{spec!r} is neither a model on the Hugging Face Hub (gpt2, gpt2-medium, gpt2-large, "
                              f"gpt2-xl or org/name) nor a local directory")
    src = snapshot(repo, revision, progress) if repo is not None else Path(spec)
    summary = import_hf(src, out_dir, source={"hub_id": repo, "revision": revision} if repo else None)
    return {**summary, "hub_id": repo, "snapshot": str(src)}


def add_arguments(p) -> None:
    p.add_argument("model", metavar="MODEL",
                   help="gpt2 | gpt2-medium | gpt2-large | gpt2-xl | a hub id (org/name) | a local HF directory")
    p.add_argument("--out", required=True, metavar="OUT_DIR", help="gpt3lab checkpoint directory to write")
    p.add_argument("--revision", default=None, help="branch, tag or commit of the hub repository (default: main)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args) -> int:
    s = download(args.model, args.out, args.revision, progress=not args.no_progress)
    src = f"{s['hub_id']} (hub snapshot {s['snapshot']})" if s["hub_id"] else s["snapshot"]
    print(f"{src} -> {s['out']}: {s['n_layer']} layers, d_model {s['d_model']}, {s['params'] / 1e6:.1f}M params"
          f"{s['note']}", file=sys.stdout)
    return 0


__all__ = ["download", "add_arguments", "run"]
