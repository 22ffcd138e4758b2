"""Chat formats: the entries of templates.yaml, and the Jinja chat templates generated from them.

A `ChatFormat` holds the pieces of text a conversation is rendered from (the fields are
documented in templates.yaml); it is the only description of a format. mllm_train's
`ChatTemplate` subclasses it to render training text with its supervised spans, and
`jinja_chat_template` writes it as the Jinja chat template an exported LlavaProcessor carries,
through which evaluation renders prompts (`processor.apply_chat_template`). Both render the same
text (tests/test_llava_chat.py checks every format of the file).

In the Jinja template, message content may be a string (which may contain "<image>") or HF
content parts ({"type": "image"}, {"type": "text"}); a turn carries at most one image, and a
leading system message replaces the words of the format's system prompt.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import re
import string
from dataclasses import dataclass
from importlib import resources

IMAGE_PLACEHOLDER = "<image>"  # the image tag of LLaVA JSON conversations and of the chat text
DEFAULT_FORMAT = "vicuna_v1"  # the chat template of exported checkpoints: LLaVA-1.5's evaluation format
# the fields rendered with str.format, and the placeholders each may use
_FORMAT_FIELDS = {"human": {"image", "text"}, "assistant": {"text"}}


@dataclass(frozen=True)
class ChatFormat:
    """One entry of templates.yaml; the fields are documented there."""

    name: str
    description: str
    system: str
    human: str
    image: str
    assistant_prompt: str
    assistant: str
    max_rounds: int | None
    requires_image: bool
    no_chat_template: str | None = None

    def __post_init__(self):
        for field, required in (("human", "{image}"), ("assistant", "{text}")):
            if required not in getattr(self, field):
                raise ValueError(f"template {self.name!r}: field {field!r} must contain {required}")
        if self.image.count(IMAGE_PLACEHOLDER) != 1:
            raise ValueError(f"template {self.name!r}: field 'image' must contain {IMAGE_PLACEHOLDER} once")
        for field in ("system", "human", "assistant_prompt", "assistant"):
            if IMAGE_PLACEHOLDER in getattr(self, field):
                raise ValueError(f"template {self.name!r}: {IMAGE_PLACEHOLDER} belongs in 'image', "
                                 f"not {field!r}")
        for field, allowed in _FORMAT_FIELDS.items():
            used = {name for _, name, _, _ in string.Formatter().parse(getattr(self, field))}
            unknown = used - allowed - {None}
            if unknown:
                raise ValueError(f"template {self.name!r}: field {field!r} uses {sorted(unknown)}; "
                                 f"its placeholders are {sorted(allowed)}")


def load_formats(cls: type[ChatFormat] = ChatFormat) -> dict[str, ChatFormat]:
    """Every entry of templates.yaml, by name, as `cls` (ChatFormat or a subclass adding a renderer)."""
    import yaml

    raw = yaml.safe_load(resources.files("llava_plugin").joinpath("templates.yaml").read_text())
    fields = {f.name for f in dataclasses.fields(cls)} - {"name"}
    formats = {}
    for name, entry in raw.items():
        if set(entry) != fields:
            raise ValueError(f"templates.yaml entry {name!r}: keys {sorted(entry)} differ from "
                             f"{sorted(fields)}")
        formats[name] = cls(name=name, **entry)
    return formats


def get_format(name: str, cls: type[ChatFormat] = ChatFormat) -> ChatFormat:
    formats = load_formats(cls)
    if name not in formats:
        raise ValueError(f"unknown chat template {name!r}; known templates: {sorted(formats)}")
    return formats[name]


# The chat template of every format: `jinja_chat_template` fills in the @FIELD@ markers from the
# format. Indentation is free: every tag strips the whitespace around it.
_JINJA = """\
{#- chat format @NAME@, generated from llava_plugin/templates.yaml by llava_plugin.chat -#}
{%- set ns = namespace(system=@SYSTEM_WORDS@, start=0, images=0) -%}
{%- set max_rounds, requires_image = @MAX_ROUNDS@, @REQUIRES_IMAGE@ -%}
{%- if messages and messages[0]['role'] == 'system' -%}
  {%- set ns.start = 1 -%}
  {%- if messages[0]['content'] is string -%}
    {%- set ns.system = messages[0]['content'] -%}
  {%- else -%}
    {%- set ns.system = messages[0]['content'] | selectattr('type', 'equalto', 'text')
                        | map(attribute='text') | join(' ') -%}
  {%- endif -%}
{%- endif -%}
{%- if max_rounds is not none
      and messages[ns.start:] | selectattr('role', 'equalto', 'user') | list | length > max_rounds -%}
  {{- raise_exception(@FORMAT@ ~ ' allows at most ' ~ max_rounds ~ ' user turns') -}}
{%- endif -%}
{{- ns.system ~ @SYSTEM_SEPARATOR@ -}}
{%- for message in messages[ns.start:] -%}
  {%- if message['content'] is string -%}
    {%- set images = message['content'].count(@IMAGE_TAG@) -%}
    {%- set text = message['content'].replace(@IMAGE_TAG@, '') -%}
  {%- else -%}
    {%- set images = message['content'] | selectattr('type', 'equalto', 'image') | list | length -%}
    {%- set text = message['content'] | selectattr('type', 'equalto', 'text') | map(attribute='text')
                   | join(' ') -%}
  {%- endif -%}
  {%- set ns.images = ns.images + images -%}
  {%- if images > 1 -%}
    {{- raise_exception('one image per conversation turn is supported') -}}
  {%- endif -%}
  {%- if message['role'] == 'user' -%}
    {#- as LLaVA-1.5: the image goes to the front of its turn and the words are stripped;
        an image-only turn drops the image's trailing whitespace -#}
    {%- if images == 1 -%}
      {%- set text = text | trim -%}
      {%- set image = @IMAGE@ if text else @IMAGE_ALONE@ -%}
    {%- else -%}
      {%- set image = '' -%}
    {%- endif -%}
    {{- @HUMAN@ -}}
  {%- elif message['role'] == 'assistant' -%}
    {%- if images -%}{{- raise_exception('assistant messages cannot carry an image') -}}{%- endif -%}
    {{- @ASSISTANT_PROMPT@ ~ @ASSISTANT@ -}}
  {%- else -%}
    {{- raise_exception('unknown role ' ~ message['role']
                        ~ ': expected system (first), user or assistant') -}}
  {%- endif -%}
{%- endfor -%}
{%- if requires_image and ns.images == 0 -%}
  {{- raise_exception(@FORMAT@ ~ ' needs an image') -}}
{%- endif -%}
{%- if add_generation_prompt -%}{{- @ASSISTANT_PROMPT@ -}}{%- endif -%}
"""


def jinja_chat_template(chat_format: ChatFormat) -> str:
    """The Jinja chat template (HF `chat_template`) rendering conversations as `chat_format` does.

    Roles: an optional leading `system`, then `user` / `assistant`. With `add_generation_prompt`
    the text ends with `assistant_prompt`. Rendering raises on what the format cannot render:
    two images in a turn, an image in an assistant turn, an unknown role, more user turns than
    `max_rounds`, no image under `requires_image`. A format with `no_chat_template` is an error here.
    """
    fmt = chat_format
    if fmt.no_chat_template:
        raise ValueError(f"chat format {fmt.name!r} has no chat template: {fmt.no_chat_template}")
    words = fmt.system.rstrip()
    fields = {
        "NAME": fmt.name, "FORMAT": _quote(f"chat format {fmt.name!r}"),
        "SYSTEM_WORDS": _quote(words), "SYSTEM_SEPARATOR": _quote(fmt.system[len(words):]),
        "MAX_ROUNDS": "none" if fmt.max_rounds is None else str(int(fmt.max_rounds)),
        "REQUIRES_IMAGE": "true" if fmt.requires_image else "false",
        "IMAGE_TAG": _quote(IMAGE_PLACEHOLDER),
        "IMAGE": _quote(fmt.image), "IMAGE_ALONE": _quote(fmt.image.rstrip()),
        "HUMAN": _jinja_format(fmt.human, image="image", text="text"),
        "ASSISTANT_PROMPT": _quote(fmt.assistant_prompt),
        "ASSISTANT": _jinja_format(fmt.assistant, text="text"),
    }
    return re.sub(r"@([A-Z_]+)@", lambda match: fields[match.group(1)], _JINJA)


@functools.cache
def chat_template(name: str = DEFAULT_FORMAT) -> str:
    """The Jinja chat template of the format `name` of templates.yaml."""
    return jinja_chat_template(get_format(name))


def _quote(text: str) -> str:
    """`text` as a Jinja string literal (Jinja reads Python/JSON backslash escapes)."""
    return json.dumps(text)


def _jinja_format(template: str, **variables: str) -> str:
    """A str.format template as a Jinja expression: literal parts quoted, each {field} replaced by
    the Jinja variable `variables[field]`, joined by `~`."""
    parts = []
    for literal, field, _, _ in string.Formatter().parse(template):
        if literal:
            parts.append(_quote(literal))
        if field is not None:
            parts.append(variables[field])
    return " ~ ".join(parts) or "''"


def render_chat(chat_template: str, messages: list[dict], add_generation_prompt: bool = False) -> str:
    """`messages` rendered by `chat_template` with the renderer `apply_chat_template` uses."""
    from transformers.utils.chat_template_utils import render_jinja_template

    rendered, _ = render_jinja_template(conversations=[messages], chat_template=chat_template,
                                        add_generation_prompt=add_generation_prompt)
    return rendered[0]
