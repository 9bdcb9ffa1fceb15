"""Request and response schemas of OpenAI's legacy Completions and Chat Completions APIs (plus
tokenize/detokenize).

Ranges are checked here so a malformed request is a 400 before it reaches the engine; checks that
need the model (vocabulary size, context window) live in service.py.
"""
from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, field_validator

TokenIds = Annotated[list[StrictInt], Field(min_length=1)]
Prompt = Union[StrictStr, Annotated[list[StrictStr], Field(min_length=1)], TokenIds,
               Annotated[list[TokenIds], Field(min_length=1)]]
Float = Annotated[float, Field(allow_inf_nan=False)]


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_usage: StrictBool = False


class CompletionRequest(BaseModel):
    """POST /v1/completions body. Unknown fields are rejected, as OpenAI does."""

    model_config = ConfigDict(extra="forbid")

    model: StrictStr
    prompt: Prompt = "<|endoftext|>"
    suffix: StrictStr | None = None
    max_tokens: Annotated[StrictInt, Field(ge=0)] | None = 16
    temperature: Annotated[Float, Field(ge=0, le=2)] | None = 1.0
    top_p: Annotated[Float, Field(gt=0, le=1)] | None = 1.0
    top_k: Annotated[StrictInt, Field(ge=0)] | None = 0          # extension; 0 = off
    n: Annotated[StrictInt, Field(ge=1, le=128)] | None = 1
    best_of: Annotated[StrictInt, Field(ge=1, le=128)] | None = None
    stream: StrictBool | None = False
    stream_options: StreamOptions | None = None
    logprobs: Annotated[StrictInt, Field(ge=0, le=5)] | None = None
    echo: StrictBool | None = False
    stop: StrictStr | Annotated[list[StrictStr], Field(max_length=4)] | None = None
    presence_penalty: Annotated[Float, Field(ge=-2, le=2)] | None = 0.0
    frequency_penalty: Annotated[Float, Field(ge=-2, le=2)] | None = 0.0
    logit_bias: dict[StrictStr, Annotated[Float, Field(ge=-100, le=100)]] | None = None
    seed: Annotated[StrictInt, Field(ge=-(2 ** 63), lt=2 ** 64)] | None = None
    user: StrictStr | None = None

    @field_validator("stop")
    @classmethod
    def _stops_non_empty(cls, v):
        stops = [v] if isinstance(v, str) else (v or [])
        if any(s == "" for s in stops):
            raise ValueError("stop strings must be non-empty")
        return v

    @field_validator("logit_bias")
    @classmethod
    def _bias_keys_are_ids(cls, v):
        for k in v or {}:
            if not k.isdigit() or len(k) > 9:
                raise ValueError(f"logit_bias key {k!r} must be a token id written as a string, e.g. \"50256\"")
        return v


class TextPart(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["text"]
    text: StrictStr


class ChatMessage(BaseModel):
    """One message; content may be a string or a list of text parts (OpenAI's array form)."""

    model_config = ConfigDict(extra="ignore")            # name, tool_call_id, ... are accepted and unused
    role: Literal["system", "developer", "user", "assistant"]
    content: StrictStr | Annotated[list[TextPart], Field(min_length=1)]

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class ChatCompletionRequest(BaseModel):
    """POST /v1/chat/completions body: messages are rendered by the chat template into a prompt."""

    model_config = ConfigDict(extra="forbid")

    model: StrictStr
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_tokens: Annotated[StrictInt, Field(ge=0)] | None = None
    max_completion_tokens: Annotated[StrictInt, Field(ge=0)] | None = None
    temperature: Annotated[Float, Field(ge=0, le=2)] | None = 1.0
    top_p: Annotated[Float, Field(gt=0, le=1)] | None = 1.0
    top_k: Annotated[StrictInt, Field(ge=0)] | None = 0          # extension; 0 = off
    n: Annotated[StrictInt, Field(ge=1, le=128)] | None = 1
    stream: StrictBool | None = False
    stream_options: StreamOptions | None = None
    logprobs: StrictBool | None = False
    top_logprobs: Annotated[StrictInt, Field(ge=0, le=5)] | None = None
    stop: StrictStr | Annotated[list[StrictStr], Field(max_length=4)] | None = None
    presence_penalty: Annotated[Float, Field(ge=-2, le=2)] | None = 0.0
    frequency_penalty: Annotated[Float, Field(ge=-2, le=2)] | None = 0.0
    logit_bias: dict[StrictStr, Annotated[Float, Field(ge=-100, le=100)]] | None = None
    seed: Annotated[StrictInt, Field(ge=-(2 ** 63), lt=2 ** 64)] | None = None
    user: StrictStr | None = None

    _stops_non_empty = field_validator("stop")(CompletionRequest._stops_non_empty.__func__)
    _bias_keys_are_ids = field_validator("logit_bias")(CompletionRequest._bias_keys_are_ids.__func__)


class ChatTopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None


class ChatTokenLogprob(ChatTopLogprob):
    top_logprobs: list[ChatTopLogprob]


class ChatLogprobs(BaseModel):
    content: list[ChatTokenLogprob] | None


class ChatResponseMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int
    message: ChatResponseMessage
    logprobs: ChatLogprobs | None = None
    finish_reason: Literal["stop", "length"] | None = None


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: "UsageInfo | None" = None


class LogProbs(BaseModel):
    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float] | None] | None
    text_offset: list[int]


class CompletionChoice(BaseModel):
    text: str
    index: int
    logprobs: LogProbs | None = None
    finish_reason: Literal["stop", "length"] | None = None


class PromptTokensDetails(BaseModel):
    cached_tokens: int = 0


class UsageInfo(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails = PromptTokensDetails()


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: UsageInfo | None = None


ChatCompletionResponse.model_rebuild()


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "gpt3lab"
    max_model_len: int


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class TokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    prompt: StrictStr
    model: StrictStr | None = None
    add_special_tokens: StrictBool = False       # accepted for vLLM/lm-eval compatibility; GPT-2 adds none


class TokenizeResponse(BaseModel):
    tokens: list[int]
    count: int
    max_model_len: int


class DetokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tokens: list[StrictInt]
    model: StrictStr | None = None


class DetokenizeResponse(BaseModel):
    prompt: str


class InspectRequest(BaseModel):
    """POST /v1/inspect body (a gpt3lab extension): one prompt, what the model does with it."""

    model_config = ConfigDict(extra="forbid")
    model: StrictStr
    prompt: StrictStr | TokenIds
    top_k: Annotated[StrictInt, Field(ge=1, le=20)] = 5
    layers: Annotated[list[Annotated[StrictInt, Field(ge=0)]], Field(min_length=1)] | None = None   # None = all


class InspectToken(BaseModel):
    id: int
    text: str


class InspectCandidate(InspectToken):
    prob: float


class InspectPosition(BaseModel):
    top: list[InspectCandidate]
    next_prob: float | None
    surprisal_bits: float | None


class InspectAttention(BaseModel):
    n_layer: int
    n_head: int
    layers: list[int]
    windows: list[int | None]
    weights: list[list[list[list[float]]]]     # [layer][head][query i][key 0..i]


class InspectResponse(BaseModel):
    model: str
    tokens: list[InspectToken]
    positions: list[InspectPosition]
    attention: InspectAttention


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody
