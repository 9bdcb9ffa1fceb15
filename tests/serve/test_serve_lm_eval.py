"""lm-evaluation-harness (`--model local-completions`) scores a local multiple-choice task through the server,
offline: the task is a YAML + JSONL in a tmp dir (--include_path) and the tokenizer is the server's own
(/tokenize, /detokenize, /tokenizer_info: lm-eval's `remote` tokenizer backend), so nothing is downloaded."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from serve_helpers import MODEL

pytest.importorskip("lm_eval")
pytestmark = pytest.mark.slow

DOCS = [
    {"question": "The capital of France is", "choices": ["Paris", "London", "Rome"], "answer": 0},
    {"question": "Two plus two equals", "choices": ["four", "five", "a fish"], "answer": 0},
    {"question": "The sky on a clear day is", "choices": ["green", "blue"], "answer": 1},
    {"question": "Ice is water that is", "choices": ["frozen", "boiling", "sung"], "answer": 0},
]

TASK = """task: serve_tiny_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{answer}}}}"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""


def own_loglikelihood(model, tok, context: str, continuation: str) -> float:
    """Sum of log p(continuation tokens | context) from one direct forward pass."""
    ctx, cont = tok.encode(context), tok.encode(continuation)
    ids = torch.tensor([ctx + cont])
    with torch.no_grad():
        logits, _ = model(ids)
    lp = logits[0].float().log_softmax(-1)                                       # (T, V)
    return sum(float(lp[len(ctx) + i - 1, t]) for i, t in enumerate(cont))


def test_lm_eval_local_completions_matches_own_scoring(server, model_and_tokenizer, tmp_path):
    model, tok = model_and_tokenizer
    data = tmp_path / "docs.jsonl"
    data.write_text("".join(json.dumps(d) + "\n" for d in DOCS))
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "serve_tiny_mc.yaml").write_text(TASK.format(data=data))
    out = tmp_path / "out"
    model_args = (f"model={MODEL},base_url={server.url}/v1/completions,tokenizer_backend=remote,"
                  f"tokenized_requests=True,num_concurrent=1,max_retries=1,max_length=128")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "HF_HOME": str(tmp_path / "hf"), "HF_DATASETS_CACHE": str(tmp_path / "hf" / "datasets")}
    r = subprocess.run([sys.executable, "-m", "lm_eval", "--model", "local-completions", "--model_args", model_args,
                        "--tasks", "serve_tiny_mc", "--include_path", str(tmp_path / "tasks"),
                        "--output_path", str(out), "--log_samples", "--batch_size", "1"],
                       capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    samples = [json.loads(line) for f in out.rglob("samples_serve_tiny_mc_*.jsonl") for line in f.open()]
    assert len(samples) == len(DOCS)
    correct = 0
    for s in samples:
        doc = s["doc"]
        lls = [float(x[0]) for x in s["filtered_resps"]]
        want = [own_loglikelihood(model, tok, doc["question"], " " + c) for c in doc["choices"]]
        assert lls == pytest.approx(want, abs=1e-4)
        correct += int(max(range(len(want)), key=want.__getitem__) == doc["answer"])
    results = json.loads(next(out.rglob("results_*.json")).read_text())
    assert results["results"]["serve_tiny_mc"]["acc,none"] == pytest.approx(correct / len(DOCS))
