"""The files of a sharded checkpoint, written with digests and read without trusting them.

    CKPT/sharded/.metadata       torch.distributed.checkpoint's index (a pickle): which tensor slice lies where
    CKPT/sharded/__R_0.distcp    the tensors process R wrote
    CKPT/sharded/SHA256SUMS      SHA-256 of each of the above, written at save (`sha256sum -c SHA256SUMS`)

Trust model. DCP reads `.metadata` with plain `pickle.load`, which runs whatever code the file names; a
downloaded run directory must not be able to do that. So the reader here never lets DCP unpickle it:
`.metadata` is (1) checked against its SHA-256 in SHA256SUMS, then (2) unpickled by a restricted
unpickler that can name only DCP's own metadata classes, torch.Size, torch dtypes and layouts, and
pathlib paths (the allowlist torch's `weights_only` applies to tensors, applied to DCP's index), and then
(3) checked field by field (every shard a plain file name in this directory, offsets and lengths whole
numbers). (2) is what makes a hostile file harmless: a pickle that names anything else (os.system, exec,
a `__reduce__` payload) is refused before any of it runs. (1) catches accidental damage, not an attacker,
who can rewrite SHA256SUMS too. The `.distcp` files hold tensors that DCP reads with
`torch.load(weights_only=True)`; each is checked against its SHA-256 before the first tensor is read
from it, so a flipped byte or a truncated copy is an error naming the file, never wrong weights.
Checkpoints written before SHA256SUMS existed load with (2) and (3) only.

Cost: each process hashes the shard files it wrote right after writing them (still in the page cache;
in the background thread for asynchronous saves), and on load each process hashes the files it reads
from. docs/BENCHMARKS.md (issue 23) has the measured overhead.
"""
from __future__ import annotations

import dataclasses
import io
import pickle
import re
from pathlib import Path

import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.filesystem import _StorageInfo
from torch.distributed.checkpoint.metadata import Metadata, StorageMeta
from torch.futures import Future

from gpt3lab.checkpoint import file_sha256
from gpt3lab.errors import CheckpointError

METADATA = ".metadata"
SUMS = "SHA256SUMS"
_PART = ".sha256-part"          # one process's digests, merged into SUMS by the coordinator
_SUM_LINE = re.compile(r"([0-9a-f]{64})  (\S+)")
_PLAIN_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")

_DCP_META = "torch.distributed.checkpoint.metadata"
# every global a DCP .metadata pickle may name; all are data constructors that run no user-chosen code
_ALLOWED = {(_DCP_META, n) for n in ("Metadata", "TensorStorageMetadata", "BytesStorageMetadata",
                                      "ChunkStorageMetadata", "TensorProperties", "MetadataIndex", "StorageMeta",
                                      "_MEM_FORMAT_ENCODING")} | {
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"), ("torch", "Size"),
    ("torch.serialization", "_get_layout")} | {
    (m, c) for m in ("pathlib", "pathlib._local") for c in ("PosixPath", "PurePosixPath", "WindowsPath",
                                                              "PureWindowsPath")}
_DTYPES = {"float64", "float32", "float16", "bfloat16", "complex64", "complex128", "int64", "int32", "int16",
           "int8", "uint8", "uint16", "uint32", "uint64", "bool", "float8_e4m3fn", "float8_e5m2",
           "float8_e4m3fnuz", "float8_e5m2fnuz"}


class _Refused(pickle.UnpicklingError):
    """The pickle names something outside the allowlist."""


class _MetadataUnpickler(pickle.Unpickler):
    """Resolves only the globals of a DCP index; anything else is refused before it can be called."""

    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED or module == "torch" and name in _DTYPES:
            return super().find_class(module, name)
        raise _Refused(f"it names {ascii(f'{module}.{name}')[1:-1][:100]}, which is not part of a checkpoint index")

    def persistent_load(self, pid):
        raise _Refused("it holds a persistent reference, which a checkpoint index never does")


def read_sums(sharded: Path) -> dict[str, str] | None:
    """{file name: SHA-256} from SHARDED/SHA256SUMS; None when the checkpoint predates digests."""
    path = sharded / SUMS
    if not path.is_file():
        return None
    sums = {}
    for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        m = _SUM_LINE.fullmatch(line.strip())
        if not m or not (m[2] == METADATA or _PLAIN_NAME.fullmatch(m[2])):
            raise CheckpointError(f"{path}: line {n} is not `SHA256  FILE`; the checkpoint is damaged, use an "
                                  f"earlier one")
        sums[m[2]] = m[1]
    return sums


def verify_file(sharded: Path, name: str, sums: dict[str, str] | None) -> None:
    """CheckpointError naming SHARDED/NAME when it is missing, or differs from its digest in `sums`."""
    path = sharded / name
    if not path.is_file():
        raise CheckpointError(f"{path}: missing; the sharded checkpoint is incomplete, use an earlier checkpoint "
                              f"or copy the whole directory again")
    if sums is None:
        return
    if name not in sums:
        raise CheckpointError(f"{path}: not listed in {SUMS}; the checkpoint was altered after it was saved, use "
                              f"an earlier checkpoint or copy the whole directory again")
    got = file_sha256(path)
    if got != sums[name]:
        raise CheckpointError(f"{path}: truncated or corrupt (SHA-256 {got[:16]}... differs from "
                              f"{sums[name][:16]}... recorded in {SUMS} at save); use an earlier checkpoint or "
                              f"copy the whole directory again")


def read_metadata(sharded: str | Path, sums: dict[str, str] | None = None) -> Metadata:
    """The DCP index of SHARDED, verified (digest), unpickled with the allowlist above and checked."""
    sharded = Path(sharded)
    path = sharded / METADATA
    verify_file(sharded, METADATA, sums)
    data = path.read_bytes()
    try:
        md = _MetadataUnpickler(io.BytesIO(data)).load()
    except _Refused as e:
        raise CheckpointError(f"{path}: refused ({e}); a sharded checkpoint from elsewhere may run code when "
                              f"read, and this one was not written by gpt3lab: do not use it") from None
    except Exception as e:      # EOFError, UnpicklingError, TypeError... from a truncated or mangled pickle
        why = "empty" if not data else f"truncated or corrupt ({type(e).__name__})"
        raise CheckpointError(f"{path}: {why}; use an earlier checkpoint or copy the whole directory "
                              f"again") from None
    _check_index(md, path)
    for name in sorted({info.relative_path for info in md.storage_data.values()}):
        if sums is not None and name not in sums or not (sharded / name).is_file():
            verify_file(sharded, name, sums)       # the error for a missing or unlisted shard file
    return md


def _check_index(md, path: Path) -> None:
    """CheckpointError unless `md` is a DCP index whose every entry names a shard file in this directory."""
    bad = None
    if not isinstance(md, Metadata) or not isinstance(md.storage_data, dict) \
            or not isinstance(md.state_dict_metadata, dict):
        bad = f"a {type(md).__name__}, not a checkpoint index"
    else:
        for info in md.storage_data.values():
            if not isinstance(info, _StorageInfo):
                bad = f"an entry of type {type(info).__name__}, not a shard location"
            elif not isinstance(info.relative_path, str) or not _PLAIN_NAME.fullmatch(info.relative_path):
                where = ascii(info.relative_path[:80]) if isinstance(info.relative_path, str) else \
                    f"a {type(info.relative_path).__name__}"
                bad = f"an entry naming {where}, not a shard file of this directory"
            elif not all(type(v) is int and v >= 0 for v in (info.offset, info.length)):
                bad = "an entry whose offset or length is not a whole number >= 0"
            if bad:
                break
    if bad:
        raise CheckpointError(f"{path}: refused (it holds {bad}); the checkpoint is damaged or not written by "
                              f"gpt3lab: do not use it")


class DigestWriter(dcp.FileSystemWriter):
    """DCP's file writer, plus SHA256SUMS: every process hashes its own shard files after writing them."""

    def write_data(self, plan, planner):
        fut = super().write_data(plan, planner)
        names = sorted({r.storage_data.relative_path for r in fut.wait()})
        if names:
            lines = "".join(f"{file_sha256(Path(self.path) / n)}  {n}\n" for n in names)
            (Path(self.path) / f"{plan.storage_data.prefix}{_PART}").write_text(lines)
        return fut

    def finish(self, metadata, results) -> None:
        super().finish(metadata, results)            # writes .metadata (coordinator only)
        d, sums = Path(self.path), {}
        for part in sorted(d.glob(f"*{_PART}")):
            sums.update((name, h) for h, name in (line.split("  ", 1) for line in part.read_text().splitlines()))
            part.unlink()
        written = {wr.storage_data.relative_path for rs in results for wr in rs}
        if written - sums.keys():
            raise RuntimeError(f"no digest for shard files {sorted(written - sums.keys())}")
        sums[METADATA] = file_sha256(d / METADATA)
        tmp = d / f"{SUMS}.tmp"
        tmp.write_text("".join(f"{sums[n]}  {n}\n" for n in sorted(sums)))
        tmp.replace(d / SUMS)


class VerifyingReader(dcp.FileSystemReader):
    """DCP's file reader that never unpickles `.metadata` itself and checks each shard file before reading it.

    The index is read (and checked) when the reader is made, so a bad checkpoint fails before DCP starts."""

    def __init__(self, sharded: str | Path):
        super().__init__(sharded)
        self.dir = Path(sharded)
        self.sums = read_sums(self.dir)
        self.metadata = read_metadata(self.dir, self.sums)
        self.verified: set[str] = set()

    def read_metadata(self) -> Metadata:      # no **kwargs: DCP then never falls back to per-rank pickles
        if self.metadata.storage_meta is None:
            self.metadata.storage_meta = StorageMeta()
        self.metadata.storage_meta.load_id = self.load_id
        return self.metadata

    def read_data(self, plan, planner):
        """Read file by file: each verified first; an error while reading names the file."""
        by_file: dict[str, list] = {}
        for item in plan.items:
            by_file.setdefault(self.storage_data[item.storage_index].relative_path, []).append(item)
        for name, items in by_file.items():
            if name not in self.verified:
                verify_file(self.dir, name, self.sums)
                self.verified.add(name)
            try:
                super().read_data(dataclasses.replace(plan, items=items), planner).wait()
            except Exception as e:   # torch.load / file errors: a truncated or mangled file without digests
                raise CheckpointError(f"{self.dir / name}: truncated or corrupt ({type(e).__name__}: "
                                      f"{_one_line(e)}); use an earlier checkpoint or copy the whole directory "
                                      f"again") from None
        fut: Future = Future()
        fut.set_result(None)
        return fut


def _one_line(e: BaseException, limit: int = 200) -> str:
    return " ".join(str(e).split())[:limit]
