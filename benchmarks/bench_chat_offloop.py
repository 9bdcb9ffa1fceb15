"""Does a costly chat request stall the server? /health latency while `gpt3lab serve` handles one.

    python benchmarks/bench_chat_offloop.py [--baseline SRC_DIR] [--repeats 3]

Starts `gpt3lab serve` on 127.0.0.1 over a tiny random GPT (and, with --baseline, a second one from
another source tree, e.g. `git archive main | tar -x -C /tmp/main`: the two measured side by side) and,
per server and repeat, sends one chat request while a client polls /health every 20 ms:
  big:     120,000 empty messages (a ~4 MB body)
  runaway: the current tree only, with --chat-template of nested range(100000) loops (10^10 steps),
           then SIGTERM during such a request: seconds until the process exits.
Prints the median and worst /health latency during each request and the request's own time, medians over
repeats; then the cost of chat.render's bounds: bounded vs plain Jinja render of 8 and 2,000 messages.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from bench_serve_load import tiny_checkpoint  # noqa: E402

NESTED = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"


def start(ckpt: Path, src: Path, extra: list[str]) -> tuple[subprocess.Popen, str]:
    env = {**os.environ, "PYTHONPATH": str(src), "GPT3LAB_API_KEY": ""}
    proc = subprocess.Popen([sys.executable, "-m", "gpt3lab", "serve", str(ckpt), "--port", "0", "--device", "cpu",
                             "--max-body-bytes", str(8 << 20), *extra], stdout=subprocess.PIPE, text=True, env=env,
                            cwd=src)          # python -m puts the cwd first on sys.path
    line = proc.stdout.readline()
    if "listening on" not in line:
        proc.kill()
        raise SystemExit(f"server did not start: {line!r}")
    return proc, line.split("listening on ")[1].split()[0]


def during(url: str, body: bytes, poll_timeout: float = 5.0) -> dict:
    """Send `body` to chat completions; poll /health meanwhile. Latencies in s (timeout counts as its limit)."""
    out: dict = {}

    def send():
        t0 = time.perf_counter()
        try:
            r = httpx.post(url + "/v1/chat/completions", content=body, timeout=60,
                           headers={"content-type": "application/json"})
            out["status"] = r.status_code
        except httpx.HTTPError as e:
            out["status"] = type(e).__name__
        out["took"] = time.perf_counter() - t0

    t = threading.Thread(target=send, daemon=True)
    t.start()
    lat = []
    with httpx.Client(base_url=url, timeout=poll_timeout) as c:
        while t.is_alive() and len(lat) < 200:
            t0 = time.perf_counter()
            try:
                c.get("/health")
            except httpx.TimeoutException:
                pass
            lat.append(time.perf_counter() - t0)
            time.sleep(0.02)
    t.join(70)
    return {"health_p50": statistics.median(lat), "health_max": max(lat), **out}


def sigterm_exit(proc: subprocess.Popen, url: str, body: bytes) -> float:
    threading.Thread(target=lambda: httpx.post(url + "/v1/chat/completions", content=body, timeout=60,
                                               headers={"content-type": "application/json"}), daemon=True).start()
    time.sleep(0.3)
    t0 = time.perf_counter()
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        return float("inf")
    return time.perf_counter() - t0


def report(name: str, runs: list[dict]) -> None:
    med = {k: statistics.median(r[k] for r in runs) for k in ("health_p50", "health_max", "took")}
    print(f"{name:<28} /health p50 {med['health_p50'] * 1e3:7.1f} ms  max {med['health_max'] * 1e3:7.1f} ms  "
          f"request {med['took']:5.2f} s  status {runs[0]['status']}")


def render_cost() -> None:
    from gpt3lab import chat
    for n in (8, 2000):
        msgs = [{"role": "user" if i % 2 == 0 else "assistant", "content": f"message {i}"} for i in range(n)]
        plain = chat._compiled(chat.DEFAULT_TEMPLATE)
        tb, tp = [], []
        for _ in range(9):
            t0 = time.perf_counter()
            chat.render(msgs)
            tb.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            plain.render(messages=msgs, add_generation_prompt=True, bos_token="", eos_token="")
            tp.append(time.perf_counter() - t0)
        b, p = statistics.median(tb), statistics.median(tp)
        print(f"render {n:>5} messages: bounded {b * 1e3:8.2f} ms, plain Jinja {p * 1e3:8.2f} ms, ratio {b / p:4.1f}x")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline", type=Path, help="another source tree to measure side by side")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    print(f"load average: {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = tiny_checkpoint(Path(tmp))
        big = json.dumps({"model": ckpt.name, "messages": [{"role": "user", "content": ""}] * 120_000}).encode()
        trees = [("current", ROOT)] + ([("baseline", args.baseline.resolve())] if args.baseline else [])
        for name, src in trees:
            proc, url = start(ckpt, src, [])
            try:
                report(f"{name}: 120k messages", [during(url, big) for _ in range(args.repeats)])
            finally:
                proc.kill()
        (Path(tmp) / "dos.jinja").write_text(NESTED)
        proc, url = start(ckpt, ROOT, ["--chat-template", str(Path(tmp) / "dos.jinja")])
        small = json.dumps({"model": ckpt.name, "messages": [{"role": "user", "content": "hi"}]}).encode()
        try:
            report("current: runaway template", [during(url, small) for _ in range(args.repeats)])
            print(f"SIGTERM during a runaway render: exited after {sigterm_exit(proc, url, small):.2f} s")
        finally:
            if proc.poll() is None:
                proc.kill()
    render_cost()
    print(f"load average: {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
