"""A local stand-in for the Hugging Face Hub's HTTP API, enough for `huggingface_hub.snapshot_download`.

Serves repositories from memory on 127.0.0.1, in the hub's layout:

    GET  /api/models/{org}/{name}[/revision/{rev}]   model info: {"id", "sha", "siblings": [{"rfilename"}]}
    GET  /api/models/{org}/{name}/tree/{rev}         the file list: [{"type": "file", "oid", "size", "path",
                                                      "lfs": {"oid", "size", "pointerSize"}}] (lfs: weights)
    HEAD /{org}/{name}/resolve/{rev}/{path}          ETag, X-Repo-Commit, Content-Length (the metadata call)
    GET  /{org}/{name}/resolve/{rev}/{path}          the bytes; honours `Range: bytes=N-` with a 206

Unknown repositories answer 404 with `X-Error-Code: RepoNotFound`, unknown revisions `RevisionNotFound`, as
the hub does. Faults for tests: `cut[path] = n` sends the full Content-Length but only n bytes of the body on
the first plain GET of `path`, then drops the connection; `fail[path] = k` answers the next k GETs of `path`
with a 500. Every request is recorded in `log` as (method, repo path, Range header or None).
"""
from __future__ import annotations

import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class FakeHub:
    def __init__(self):
        self.repos: dict[str, dict[str, bytes]] = {}
        self.cut: dict[str, int] = {}
        self.fail: dict[str, int] = {}
        self.log: list[tuple[str, str, str | None]] = []
        self._lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def add_repo(self, repo_id: str, directory: str | Path) -> None:
        """Serve every file under `directory` as repository `repo_id`."""
        d = Path(directory)
        self.repos[repo_id] = {p.relative_to(d).as_posix(): p.read_bytes() for p in sorted(d.rglob("*"))
                               if p.is_file()}

    def sha(self, repo_id: str) -> str:
        """The repository's one commit: a digest of all its files (40 hex digits, like a git sha)."""
        h = hashlib.sha1()
        for path, data in sorted(self.repos[repo_id].items()):
            h.update(path.encode() + b"\0" + hashlib.sha1(data).digest())
        return h.hexdigest()

    def gets(self, path: str) -> list[str | None]:
        """The Range headers of every GET of `path` (None: a whole-file GET)."""
        return [rng for method, p, rng in self.log if method == "GET" and p.endswith("/" + path)]

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def _is_lfs(path: str) -> bool:
    return path.endswith(".safetensors")


def _etag(path: str, data: bytes) -> str:
    # the hub's ETag: the git blob sha for small files, the sha256 of the content for LFS files
    return hashlib.sha256(data).hexdigest() if _is_lfs(path) else hashlib.sha1(data).hexdigest()


def _handler(hub: FakeHub):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):       # quiet
            pass

        def _json(self, obj, status: int = 200, headers: dict | None = None) -> None:
            body = json.dumps(obj).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _error(self, status: int, code: str, message: str) -> None:
            self._json({"error": message}, status, {"X-Error-Code": code, "X-Error-Message": message})

        def _repo(self, repo_id: str, rev: str) -> dict[str, bytes] | None:
            if repo_id not in hub.repos:
                self._error(404, "RepoNotFound", "Repository not found")
                return None
            if rev not in ("main", hub.sha(repo_id)):
                self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
                return None
            return hub.repos[repo_id]

        def do_HEAD(self):
            self.do_GET()

        def do_GET(self):
            path = self.path.split("?", 1)[0]
            with hub._lock:
                hub.log.append((self.command, path, self.headers.get("Range")))
            m = re.fullmatch(r"/api/models/([^/]+/[^/]+)(?:/revision/([^/]+))?", path)
            if m:
                return self._info(m.group(1), m.group(2) or "main")
            m = re.fullmatch(r"/api/models/([^/]+/[^/]+)/tree/([^/]+)(?:/.*)?", path)
            if m:
                return self._tree(m.group(1), m.group(2))
            m = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
            if m:
                return self._file(*m.groups())
            self._error(404, "EntryNotFound", f"no route {path}")

        def _info(self, repo_id: str, rev: str) -> None:
            files = self._repo(repo_id, rev)
            if files is not None:
                self._json({"id": repo_id, "modelId": repo_id, "sha": hub.sha(repo_id), "private": False,
                            "siblings": [{"rfilename": p} for p in files]})

        def _tree(self, repo_id: str, rev: str) -> None:
            files = self._repo(repo_id, rev)
            if files is None:
                return
            entries = []
            for p, data in files.items():
                e = {"type": "file", "oid": hashlib.sha1(data).hexdigest(), "size": len(data), "path": p}
                if _is_lfs(p):
                    e["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
                entries.append(e)
            self._json(entries)

        def _file(self, repo_id: str, rev: str, name: str) -> None:
            files = self._repo(repo_id, rev)
            if files is None:
                return
            if name not in files:
                return self._error(404, "EntryNotFound", f"{name} does not exist")
            data = files[name]
            if self.command == "GET":
                with hub._lock:
                    failing = hub.fail.get(name, 0)
                    if failing:
                        hub.fail[name] = failing - 1
                if failing:
                    return self._error(500, "InternalError", "the fake hub fails this request on purpose")
            start = 0
            rng = self.headers.get("Range")
            if rng:
                start = int(re.fullmatch(r"bytes=(\d+)-(\d*)", rng).group(1))
            self.send_response(206 if start else 200)
            self.send_header("Content-Length", str(len(data) - start))
            self.send_header("ETag", f'"{_etag(name, data)}"')
            self.send_header("X-Repo-Commit", hub.sha(repo_id))
            self.send_header("Accept-Ranges", "bytes")
            if start:
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            self.end_headers()
            if self.command == "HEAD":
                return
            with hub._lock:
                cut = hub.cut.pop(name, None) if not start else None
            if cut is not None:       # the connection drops mid-file
                self.wfile.write(data[:cut])
                self.wfile.flush()
                self.close_connection = True
                self.connection.shutdown(2)
                return
            self.wfile.write(data[start:])

    return Handler
