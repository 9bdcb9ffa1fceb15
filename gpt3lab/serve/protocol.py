"""Request and response schemas of OpenAI's legacy Completions and Chat Completions APIs (plus
tokenize/detokenize).

Only the JSON shapes and types are checked here (a malformed body is a 400 before anything runs). The
values of the sampling fields are checked by the one request validator, SamplingParams.validate, the
same rules the Python API, the CLI and the engine apply; service.py adds the HTTP-only rules.
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


class SamplingFields(BaseModel):
    """The fields both request bodies share (their values are checked by SamplingParams.validate)."""

    model_config = ConfigDict(extra="forbid")

    model: StrictStr
    temperature: Float | None = 1.0
    top_p: Float | None = 1.0
    top_k: StrictInt | None = 0          # extension; 0 = off
    n: StrictInt | None = 1
    stream: StrictBool | None = False
    stream_options: StreamOptions | None = None
    stop: StrictStr | list[StrictStr] | None = None
    presence_penalty: Float | None = 0.0
    frequency_penalty: Float | None = 0.0
    logit_bias: dict[StrictStr, Float] | None = None
    seed: Annotated[StrictInt, Field(ge=-(2 ** 63), lt=2 ** 64)] | None = None
    user: StrictStr | None = None
    sliding_window: StrictBool | None = False    # extension: max_tokens may run past the context window

    @field_validator("logit_bias")
    @classmethod
    def _bias_keys_are_ids(cls, v):
        for k in v or {}:
            token_id_key(k)
        return v


class CompletionRequest(SamplingFields):
    """POST /v1/completions body. Unknown fields are rejected, as OpenAI does."""

    prompt: Prompt = "<|endoftext|>"
    suffix: StrictStr | None = None
    max_tokens: StrictInt | None = 16
    best_of: StrictInt | None = None
    logprobs: Annotated[StrictInt, Field(ge=0, le=5)] | None = None       # OpenAI's Completions limit
    echo: StrictBool | None = False


def token_id_key(key: str) -> int:
    """A logit_bias key -> its token id. Only ASCII digits (at most 9) are accepted: str.isdigit() also
    accepts "²" or "٣", which int() then rejects (that was a 500); ValueError otherwise (a 400)."""
    if not (0 < len(key) <= 9 and key.isascii() and key.isdigit()):
        raise ValueError(f"logit_bias key {key[:20]!r} must be a token id written as a string of ASCII digits, "
                         f"e.g. \"50256\"")
    return int(key)


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


class ChatCompletionRequest(SamplingFields):
    """POST /v1/chat/completions body: messages are rendered by the chat template into a prompt."""

    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_tokens: StrictInt | None = None
    max_completion_tokens: StrictInt | None = None
    logprobs: StrictBool | None = False
    top_logprobs: Annotated[StrictInt, Field(ge=0, le=20)] | None = None   # OpenAI's Chat Completions limit


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
    prompt: StrictStr | None = None
    messages: list["ChatMessage"] | None = None   # instead of prompt: rendered by the chat template (as vLLM)
    model: StrictStr | None = None
    add_special_tokens: StrictBool = False       # accepted for vLLM/lm-eval compatibility; GPT-2 adds none


class TokenizeResponse(BaseModel):
    tokens: list[int]
    count: int
    max_model_len: int
    prompt: str | None = None                # messages given: the text the chat template rendered


class DetokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tokens: list[StrictInt]
    model: StrictStr | None = None


class DetokenizeResponse(BaseModel):
    prompt: str


class InspectStepRequest(BaseModel):
    """The sampler's settings for one generation step (as in /v1/completions)."""

    model_config = ConfigDict(extra="forbid")
    temperature: Annotated[Float, Field(ge=0, le=2)] = 1.0
    top_k: Annotated[StrictInt, Field(ge=0)] = 0           # 0 = off
    top_p: Annotated[Float, Field(gt=0, le=1)] = 1.0
    seed: StrictInt | None = None
    show: Annotated[StrictInt, Field(ge=1, le=50)] = 10    # candidates returned


class InspectForwardRequest(BaseModel):
    """One token followed through the model (gpt3lab.forward_pass)."""

    model_config = ConfigDict(extra="forbid")
    position: Annotated[StrictInt, Field(ge=0)] | None = None     # None = the last token
    top_k: Annotated[StrictInt, Field(ge=1, le=50)] = 10         # next-token candidates at the end


class InspectRequest(BaseModel):
    """POST /v1/inspect body (a gpt3lab extension): one prompt, what the model does with it."""

    model_config = ConfigDict(extra="forbid")
    model: StrictStr
    prompt: StrictStr | TokenIds
    top_k: Annotated[StrictInt, Field(ge=1, le=20)] = 5
    layers: Annotated[list[Annotated[StrictInt, Field(ge=0)]], Field(min_length=1)] | None = None   # None = all
    attention: StrictBool = True        # false: no attention weights (tracks or a step only)
    lens: StrictBool = False            # true: the logit lens ("tracks"), (n_layer + 1) x T x lens_top_k cells
    lens_top_k: Annotated[StrictInt, Field(ge=1, le=10)] = 3
    step: InspectStepRequest | None = None   # one step of the generation loop at the prompt's end
    forward: InspectForwardRequest | None = None   # one token's forward pass, stage by stage
    truncate: StrictBool = False        # a prompt over the limit: inspect its last tokens instead of a 400


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


class InspectLensCell(BaseModel):
    top: list[InspectCandidate]
    next_prob: float | None


class InspectLens(BaseModel):
    rows: list[str]                          # "embedding", "block 0", ..., "block L-1"
    norms: list[list[float]]                 # [row][position] L2 norm of the residual stream
    cells: list[list[InspectLensCell]]       # [row][position]: ln_f + unembedding of that residual


class InspectStepCandidate(InspectCandidate):
    model_prob: float                        # raw softmax; prob is after temperature / top_k / top_p


class InspectStep(BaseModel):
    top: list[InspectStepCandidate]
    kept: int                                # tokens left after the filters
    token: InspectStepCandidate              # the sampler's draw


class InspectResponse(BaseModel):
    """tokens/positions always; attention unless attention=false; lens and step only when asked for."""
    model: str
    tokens: list[InspectToken]
    positions: list[InspectPosition]
    attention: InspectAttention
    lens: InspectLens | None = None
    step: InspectStep | None = None
    forward: dict | None = None              # gpt3lab.forward_pass's payload (see its docstring)
    dropped: int | None = None               # truncate=true: tokens dropped from the prompt's front


class PrimingRequest(BaseModel):
    """POST /v1/inspect/priming: one task's in-context learning curve (gpt3lab extension)."""

    model_config = ConfigDict(extra="forbid")
    model: StrictStr
    task: StrictStr = "mapping"              # a built-in eval task name, or "mapping" (the priming demo's)
    shots: Annotated[list[Annotated[StrictInt, Field(ge=0, le=32)]], Field(min_length=1, max_length=9)] = \
        [0, 1, 2, 4, 8]
    n: Annotated[StrictInt, Field(ge=1, le=100)] = 20          # test items per k
    seed: Annotated[StrictInt, Field(ge=0)] = 0


class PrimingInfo(BaseModel):
    """GET /v1/inspect/priming: the task names, and the one the served model was trained for (if any)."""
    tasks: list[str]
    trained_for: str | None


class PrimingShot(BaseModel):
    k: int
    value: float                             # the harness's primary metric (accuracy / exact match)
    answer_logprob: float                    # mean log p(gold answer | prompt), natural log
    mean_shots: float
    prompt: str
    gold: str
    prediction: str


class PrimingResponse(BaseModel):
    model: str
    task: str
    kind: str
    metric: str
    chance: float                            # the metric a random guess scores (multiple choice: 1 / choices)
    shots: list[PrimingShot]


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody
