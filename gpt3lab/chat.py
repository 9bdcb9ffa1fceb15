"""Chat templates: a list of messages -> the prompt text a GPT continues.

A template is Jinja (the language Hugging Face's `chat_template` uses, so one string works in both):
it sees `messages` (dicts with "role" and "content"), `add_generation_prompt`, `bos_token` and
`eos_token`, and is rendered in a sandbox. A checkpoint stores its template in config.json
("chat_template", written by `gpt3lab finetune` and by `convert --from-hf` when tokenizer_config.json has
one; exported to tokenizer_config.json by `convert --to-hf`). Hugging Face's list of named templates
([{"name": "default", "template": ...}, {"name": "tool_use", ...}]) is accepted too: the one named
"default" is used, as transformers does. A base model has none and gets
DEFAULT_TEMPLATE, a plain transcript a pretrained model can continue:

    You are terse.                  <- a system message, as is

    User: Hi there

    Assistant: Hello!

    User: How are you?

    Assistant:

Generation with the default template also stops at DEFAULT_STOP ("\\nUser:"), where a base model starts
writing the user's next turn itself, unless the request gives its own `stop` list (which replaces it). Serving (POST /v1/chat/completions) and fine-tuning on chat
`messages` JSONL both render through here and tokenize with `encode`, so a model is trained on exactly what
it is later served.

Message content is text, never control tokens: "<|endoftext|>" typed in a message is encoded as the
ordinary characters it is made of (as the OpenAI API encodes user text), while the one the template
itself writes (`eos_token`, `bos_token`) is the real end-of-text token. A user cannot forge a turn in a
template that separates turns with it.

A template is a program from whoever made the checkpoint, so it runs bounded, like any untrusted code:
in Jinja's immutable sandbox, without `{% include %}`/`{% import %}` (no loader), with the sandbox's
100,000-item `range`, repetition (`*`) and powers (`**`) refused past MAX_RENDERED_CHARS / MAX_EXPONENT,
at most RENDER_SECONDS of wall time (checked on every line the compiled template runs) and
MAX_RENDERED_CHARS of output. Whatever goes wrong in it is a DataError naming the template, never a hang
or a crash. The server renders in a worker thread and checks that the template compiles when it starts.
"""
from __future__ import annotations

import sys
import time
from functools import lru_cache

from gpt3lab.errors import ConfigError, DataError

DEFAULT_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m['role'] == 'system' %}{{ m['content'] + '\\n\\n' }}"
    "{% else %}{{ m['role'] | capitalize }}{{ ': ' + m['content'] + '\\n\\n' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}")
DEFAULT_STOP = ["\nUser:"]
ROLES = ("system", "developer", "user", "assistant")
EOT = "<|endoftext|>"
# stands for an "<|endoftext|>" typed in message content while the template runs; `encode` turns it back
# into those 13 characters, as plain text (a Unicode noncharacter, reserved for such internal use; one typed
# in a message is dropped)
TYPED_EOT = "\ufdd0"
RENDER_SECONDS = 1.0              # wall time one rendering may take
MAX_RENDERED_CHARS = 8 << 20      # output of one rendering, and of one `*` repetition inside it
MAX_EXPONENT = 4096               # largest integer power a template may compute


class TemplateLimit(BaseException):
    """A template ran past a bound. A BaseException, so no `except Exception` on the way can swallow it."""


def content_text(content) -> str | None:
    """A message's content as text: a string, or OpenAI's list of {"type": "text", "text": ...} parts
    (joined); None for anything else."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and content and all(
            isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) and
            set(p) <= {"type", "text"} for p in content):
        return "".join(p["text"] for p in content)
    return None


def select_template(value, where: str) -> str | None:
    """The template to use from a stored `chat_template` value: a Jinja string, or Hugging Face's list of
    named templates ({"name", "template"} objects, or a {name: template} dict), of which the one named
    "default" (as transformers picks). ConfigError naming `where` for anything else."""
    if value is None or isinstance(value, str):
        return value
    named = None
    if isinstance(value, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        named = value
    elif isinstance(value, list) and all(isinstance(t, dict) and isinstance(t.get("name"), str) and
                                         isinstance(t.get("template"), str) for t in value):
        named = {t["name"]: t["template"] for t in value}
    if named is None:
        raise ConfigError(f"chat_template in {where} is {type(value).__name__} {str(value)[:60]}, not a Jinja "
                          f"string or a list of {{\"name\", \"template\"}} objects; fix it, or pass "
                          f"--chat-template FILE")
    if "default" not in named:
        raise ConfigError(f"chat_template in {where} names templates {', '.join(sorted(named)) or '(none)'} "
                          f"but none \"default\"; pass the one to use with --chat-template FILE")
    return named["default"]


def check_template(template: str | None, where: str) -> None:
    """ConfigError (naming `where`) unless `template` compiles; None (the default) always does."""
    try:
        _compiled(template or DEFAULT_TEMPLATE)
    except DataError as e:
        raise ConfigError(f"{where}: {e}") from None


def _environment():
    from jinja2 import FunctionLoader
    from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError

    class BoundedEnvironment(ImmutableSandboxedEnvironment):
        """The immutable sandbox, with `*` and `**` unable to build huge values in one C-level step."""

        intercepted_binops = frozenset({"*", "**"})

        def call_binop(self, context, operator, left, right):
            if operator == "*":
                for seq, n in ((left, right), (right, left)):
                    if (isinstance(seq, (str, list, tuple)) and isinstance(n, int)
                            and len(seq) * n > MAX_RENDERED_CHARS):
                        raise SecurityError(f"repetition of {len(seq)} items x {n} exceeds the bound of "
                                            f"{MAX_RENDERED_CHARS}")
            elif isinstance(left, int) and isinstance(right, int) and abs(left) > 1 and right > MAX_EXPONENT:
                raise SecurityError(f"power with exponent {right} exceeds the bound of {MAX_EXPONENT}")
            return super().call_binop(context, operator, left, right)

    # a loader that finds nothing: {% include %} / {% import %} are a clear TemplateNotFound, not a TypeError
    return BoundedEnvironment(trim_blocks=True, lstrip_blocks=True, loader=FunctionLoader(lambda name: None))


@lru_cache(maxsize=8)
def _compiled(template: str):
    from jinja2 import TemplateError

    try:
        return _environment().from_string(template)
    except (TemplateError, RecursionError, MemoryError, ValueError, OverflowError) as e:
        raise DataError(f"chat template does not compile ({e.__class__.__name__}: {e}); fix the Jinja "
                        f"template") from None


def render(messages: list[dict], template: str | None = None, add_generation_prompt: bool = True,
           seconds: float = RENDER_SECONDS, max_chars: int = MAX_RENDERED_CHARS) -> str:
    """The prompt text of `messages` under `template` (None: DEFAULT_TEMPLATE), bounded in time and size.

    An "<|endoftext|>" typed in a message comes back as TYPED_EOT: tokenize the result with `encode`
    (and show it with `shown`)."""
    for i, m in enumerate(messages):
        if m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise DataError(f"message {i}: expected {{\"role\": one of {', '.join(ROLES)}, \"content\": a string}}, "
                            f"got {str(m)[:80]}")
    msgs = [{"role": "system" if m["role"] == "developer" else m["role"],
             "content": m["content"].replace(TYPED_EOT, "").replace(EOT, TYPED_EOT)} for m in messages]
    compiled = _compiled(template or DEFAULT_TEMPLATE)
    deadline = time.monotonic() + seconds

    def tracer(frame, event, arg):
        # every call checks the clock, and so does every line of the compiled template itself (its loops);
        # Jinja's own functions are not traced line by line, which would make rendering ~15x slower
        if time.monotonic() > deadline:
            raise TemplateLimit(f"took longer than {seconds:g} s")
        return tracer if frame.f_code.co_filename == "<template>" else None

    previous = sys.gettrace()
    sys.settrace(tracer)
    try:
        out, size = [], 0
        for piece in compiled.generate(messages=msgs, add_generation_prompt=add_generation_prompt,
                                       bos_token=EOT, eos_token=EOT):
            size += len(piece)
            if size > max_chars:
                raise TemplateLimit(f"wrote more than {max_chars:,} characters")
            out.append(piece)
        return "".join(out)
    except TemplateLimit as e:
        raise DataError(f"chat template {e} on these {len(messages)} message(s); send fewer or shorter messages, "
                        f"or fix the template") from None
    except Exception as e:     # noqa: BLE001  the template is a program: any failure of it is its error
        raise DataError(f"chat template failed on these messages ({e.__class__.__name__}: {str(e)[:200]}); "
                        f"fix the template or the messages") from None
    finally:
        sys.settrace(previous)


def encode(tok, text: str) -> list[int]:
    """Token ids of rendered chat text: "<|endoftext|>" written by the template is the special token,
    text typed in messages (TYPED_EOT included) is ordinary text."""
    ids: list[int] = []
    for i, piece in enumerate(text.split(EOT)):
        if i:
            ids.append(tok.eot_id)
        ids += tok.encode_ordinary(piece.replace(TYPED_EOT, EOT))
    return ids


def shown(text: str) -> str:
    """Rendered text as a person reads it (typed "<|endoftext|>" written out again)."""
    return text.replace(TYPED_EOT, EOT)


def default_stop(template: str | None) -> list[str]:
    """Stop strings that come with a template: DEFAULT_STOP for the default one, none for a stored one."""
    return list(DEFAULT_STOP) if template is None else []


def assistant_spans(messages: list[dict], template: str | None = None) -> tuple[str, list[tuple[int, int]]]:
    """(text of the whole conversation, [start, end) character spans of each assistant turn); tokenize
    the text's pieces with `encode`.

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
