"""Prometheus text exposition (format 0.0.4), written by hand: counters, gauges, histograms.

The server's own counters live here; the engine's (running, waiting, KV blocks, prefix cache) are
read from `engine.stats()` at scrape time and exported as gauges.
"""
from __future__ import annotations

import bisect
import threading
from collections import defaultdict

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
PREFIX = "gpt3lab"


def escape_label(value: str) -> str:
    """A label value in the text format: backslash, double quote and newline escaped (as prometheus-client
    does), so no value can end the label or start a new line."""
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class Histogram:
    def __init__(self, buckets=LATENCY_BUCKETS):
        self.buckets = tuple(buckets)
        self.counts = [0] * (len(self.buckets) + 1)    # last = +Inf
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.sum += value
        self.count += 1

    def lines(self, name: str) -> list[str]:
        out, acc = [], 0
        for le, c in zip(self.buckets + (float("inf"),), self.counts):
            acc += c
            out.append(f'{name}_bucket{{le="{"+Inf" if le == float("inf") else le}"}} {acc}')
        return out + [f"{name}_sum {self.sum:.6f}", f"{name}_count {self.count}"]


class Metrics:
    """Thread-safe server counters; `render(engine_stats)` gives the /metrics page."""

    def __init__(self):
        self._lock = threading.Lock()
        self.requests = defaultdict(int)            # (route, status) -> count
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.cached_tokens = 0
        self.cancelled = 0
        self.running = 0                            # requests holding a serving slot
        self.waiting = 0                            # requests queued for a slot
        self.latency = Histogram()                  # whole request, seconds
        self.ttft = Histogram()                     # time to first token, seconds

    def request_done(self, route: str, status: int) -> None:
        with self._lock:
            self.requests[(route, status)] += 1

    def tokens(self, prompt: int, completion: int, cached: int) -> None:
        with self._lock:
            self.prompt_tokens += prompt
            self.completion_tokens += completion
            self.cached_tokens += cached

    def observe(self, latency: float | None = None, ttft: float | None = None) -> None:
        with self._lock:
            if latency is not None:
                self.latency.observe(latency)
            if ttft is not None:
                self.ttft.observe(ttft)

    def render(self, engine_stats: dict | None = None) -> str:
        p = PREFIX
        with self._lock:
            lines = [f"# HELP {p}_requests_total HTTP requests by route and status.",
                     f"# TYPE {p}_requests_total counter"]
            lines += [f'{p}_requests_total{{route="{escape_label(r)}",status="{s}"}} {n}'
                      for (r, s), n in sorted(self.requests.items())]
            for name, value, help_ in (
                    ("prompt_tokens_total", self.prompt_tokens, "Prompt tokens processed."),
                    ("completion_tokens_total", self.completion_tokens, "Completion tokens generated."),
                    ("cached_prompt_tokens_total", self.cached_tokens, "Prompt tokens served from the prefix cache."),
                    ("cancelled_requests_total", self.cancelled, "Requests cancelled by a client disconnect.")):
                lines += [f"# HELP {p}_{name} {help_}", f"# TYPE {p}_{name} counter", f"{p}_{name} {value}"]
            for name, value, help_ in (("requests_running", self.running, "Requests holding a serving slot."),
                                       ("requests_waiting", self.waiting, "Requests queued for a serving slot.")):
                lines += [f"# HELP {p}_{name} {help_}", f"# TYPE {p}_{name} gauge", f"{p}_{name} {value}"]
            for name, h, help_ in (("request_latency_seconds", self.latency, "End-to-end request latency."),
                                   ("time_to_first_token_seconds", self.ttft, "Time to the first token.")):
                lines += [f"# HELP {p}_{name} {help_}", f"# TYPE {p}_{name} histogram"] + h.lines(f"{p}_{name}")
        lines += engine_lines(engine_stats or {})
        return "\n".join(lines) + "\n"


def engine_lines(stats: dict) -> list[str]:
    """engine.stats() numbers as gauges, plus the prefix cache hit rate when hits/queries are given."""
    p, lines = PREFIX, []
    for key, value in sorted(stats.items()):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        name = "".join(c if c.isalnum() else "_" for c in str(key))
        lines += [f"# TYPE {p}_engine_{name} gauge", f"{p}_engine_{name} {value}"]
    hits, queries = stats.get("prefix_cache_hits"), stats.get("prefix_cache_queries")
    if isinstance(hits, (int, float)) and isinstance(queries, (int, float)):
        rate = hits / queries if queries else 0.0
        lines += [f"# HELP {p}_prefix_cache_hit_rate Prefix cache hits / queries since start.",
                  f"# TYPE {p}_prefix_cache_hit_rate gauge", f"{p}_prefix_cache_hit_rate {rate:.6f}"]
    return lines
