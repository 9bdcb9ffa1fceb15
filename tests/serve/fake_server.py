"""`python tests/serve/fake_server.py CKPT STEP_DELAY [--api-key K]`: the real serve stack (create_app +
serve_app, signals included) over FakeEngine, for subprocess tests that need a slow, scripted stream (SIGTERM while a request is in flight)."""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from fake_engine import FakeEngine  # noqa: E402

from gpt3lab import load  # noqa: E402
from gpt3lab.serve.app import create_app  # noqa: E402
from gpt3lab.serve.cli import serve_app  # noqa: E402
from gpt3lab.serve.service import CompletionService  # noqa: E402


def main(argv: list[str]) -> None:
    ckpt, delay = argv[0], float(argv[1])
    model, tok = load(ckpt)
    engine = FakeEngine(model, tok, step_delay=delay)
    from gpt3lab.inspector import Inspector
    service = CompletionService(engine, Path(ckpt).name, max_concurrent=64, max_queue=1024,
                                inspector=Inspector(model, tok))
    app = create_app(service, argv[3:4] if argv[2:3] == ["--api-key"] else [],
                     on_shutdown=lambda: engine.shutdown(cancel_running=True))
    serve_app(app, "127.0.0.1", 0, shutdown_timeout=10, announce=lambda line: print(line, flush=True))


if __name__ == "__main__":
    main(sys.argv[1:])
