"""Chat templates: a list of messages -> the prompt text a GPT continues.

A template is Jinja (the language Hugging Face's `chat_template` uses, so one string works in both):
it sees `messages` (dicts with "role" and "content"), `add_generation_prompt`, `bos_token` and
`eos_token`, and is rendered in a sandbox. A checkpoint stores its template in config.json
("chat_template", written by `gpt3lab finetune` and by `convert --from-hf` when tokenizer_config.json has
one; exported to tokenizer_config.json by `convert --to-hf`). A base model has none and gets
DEFAULT_TEMPLATE, a plain transcript a pretrained model can continue:

    You are terse.                  <- a system message, as is

    User: Hi there

    Assistant: Hello!

    User: How are you?

    Assistant:

Generation with the default template also stops at DEFAULT_STOP ("\\nUser:"), where a base model starts
writing the user's next turn itself, unless the request gives its own `stop` list (which replaces it). Serving (POST /v1/chat/completions) and fine-tuning on chat
`messages` JSONL both render through here, so a model is trained on exactly what it is later served.
"""
from __future__ import annotations

from functools import lru_cache

from gpt3lab.errors import DataError

DEFAULT_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m['role'] == 'system' %}{{ m['content'] + '\\n\\n' }}"
    "{% else %}{{ m['role'] | capitalize }}{{ ': ' + m['content'] + '\\n\\n' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}")
DEFAULT_STOP = ["\nUser:"]
ROLES = ("system", "developer", "user", "assistant")
EOT = "<|endoftext|>"


@lru_cache(maxsize=8)
def _compiled(template: str):
    from jinja2 import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    try:
        return ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True).from_string(template)
    except TemplateError as e:
        raise DataError(f"chat template does not compile ({e}); fix the Jinja template") from None


def render(messages: list[dict], template: str | None = None, add_generation_prompt: bool = True) -> str:
    """The prompt text of `messages` under `template` (None: DEFAULT_TEMPLATE)."""
    from jinja2 import TemplateError

    for i, m in enumerate(messages):
        if m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise DataError(f"message {i}: expected {{\"role\": one of {', '.join(ROLES)}, \"content\": a string}}, "
                            f"got {str(m)[:80]}")
    msgs = [{"role": "system" if m["role"] == "developer" else m["role"], "content": m["content"]} for m in messages]
    try:
        return _compiled(template or DEFAULT_TEMPLATE).render(
            messages=msgs, add_generation_prompt=add_generation_prompt, bos_token=EOT, eos_token=EOT)
    except TemplateError as e:
        raise DataError(f"chat template failed on these messages ({e}); fix the template or the messages") from None


def default_stop(template: str | None) -> list[str]:
    """Stop strings that come with a template: DEFAULT_STOP for the default one, none for a stored one."""
    return list(DEFAULT_STOP) if template is None else []


def assistant_spans(messages: list[dict], template: str | None = None) -> tuple[str, list[tuple[int, int]]]:
    """(text of the whole conversation, [start, end) character spans of each assistant turn).

    A turn's span is what rendering the conversation up to that turn adds after the generation prompt
    of the conversation before it, so training targets are exactly what the model generates when served.
    """
    text = render(messages, template, add_generation_prompt=False)
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before = render(messages[:i], template, add_generation_prompt=True)
        upto = render(messages[:i + 1], template, add_generation_prompt=False)
        if not (upto.startswith(before) and text.startswith(upto)):
            raise DataError(f"chat template does not render turn {i} as an extension of the turns before it; "
                            f"a template must only append per message to be trained on")
        spans.append((len(before), len(upto)))
    return text, spans
