"""OpenAI-compatible serving: `gpt3lab serve CHECKPOINT_DIR`.

protocol.py  request/response schemas (pydantic)
service.py   request -> SamplingParams -> engine -> response/SSE chunks (no model code)
app.py       FastAPI routes, auth + body-limit middleware, OpenAI-shaped errors
metrics.py   Prometheus text exposition
cli.py       the command; static/ holds the playground page served at GET /
"""
