"""How a conversation becomes prompt tokens, and an answer becomes response tokens.

A base whose tokenizer carries a chat template is prompted the way it was tuned: the turns
go through `tokenizer.apply_chat_template(turns, add_generation_prompt=True)`, and a
response is its text followed by the template's end-of-turn token.

A base without one (the built-in tiny base, most small pretrained bases) gets the ONE plain
template below, version `TEMPLATE_VERSION`:

    <s>System: {system}\\n                 (each system turn)
    User: {user}\\n                        (each user turn)
    Assistant: {assistant}</s>\\n          (each earlier assistant turn)
    User: {last user turn}\\n
    Assistant:                            <- the prompt ends here
     {response}</s>                       <- the response: a space, the answer, then EOS

`</s>` is the tokenizer's EOS token, which also ends a response (the end-of-turn token).
A single prompt/response record is the one-user-turn case. Multiple choice uses the same
template: the question is the user turn and every option's text a candidate response (the
options are not listed in the prompt, so no answer letter or position enters the score).
Any change to what the plain template renders must bump `TEMPLATE_VERSION`: sites compare
it to agree on the task.

A rendering comes in three parts so a long prompt can be cut where it does no harm: the
head (BOS, earlier turns, the last user turn's opening), the last user turn's content, and
the tail (the template's closing up to the generation prompt). The content loses tokens
from its end first; the tail is never cut. Each part is tokenized on its own (without
special tokens added), so a site's records can never make a template's markers disappear.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from gossipmed.errors import DataError

TEMPLATE_VERSION = 1
PLAIN_TEMPLATE_NAME = f"plain-v{TEMPLATE_VERSION}"
ROLES = ("system", "user", "assistant")
_PLAIN_ROLE = {"system": "System", "user": "User", "assistant": "Assistant"}
_SENTINEL = "GossipmedUserContent7f3a9c"  # marks where the last user content goes

Tokenize = Callable[[str], list[int]]


@dataclass(frozen=True)
class RenderedPrompt:
    """A prompt in the three parts that truncation treats differently (see the module)."""

    head: tuple[int, ...]  # starts with BOS
    user: tuple[int, ...]  # cut from its end first
    tail: tuple[int, ...]  # never cut

    def fit(self, budget: int) -> tuple[list[int], bool] | None:
        """(prompt ids of at most `budget` tokens, whether anything was cut), or None when
        BOS and the tail alone exceed it. The user content loses its last tokens first;
        only when it is gone does the earlier conversation lose its oldest (BOS stays)."""
        over = len(self.head) + len(self.user) + len(self.tail) - budget
        if over <= 0:
            return [*self.head, *self.user, *self.tail], False
        keep_user = max(0, len(self.user) - over)
        over -= len(self.user) - keep_user
        head = list(self.head)
        if over > 0:
            if len(head) - over < 1:
                return None
            head = head[:1] + head[1 + over :]
        return [*head, *self.user[:keep_user], *self.tail], True


class PromptTemplate(Protocol):
    name: str  # what sites compare: the plain template's version or the chat template's hash
    end_of_turn: int

    def render(self, turns: Sequence[tuple[str, str]]) -> RenderedPrompt: ...

    def response_ids(self, content: str) -> list[int]: ...


def _last_user(turns: Sequence[tuple[str, str]]) -> int:
    for i in range(len(turns) - 1, -1, -1):
        if turns[i][0] == "user":
            return i
    raise DataError("a prompt needs at least one user turn")


class PlainTemplate:
    """The documented plain template (module docstring), for tokenizers without their own."""

    name = PLAIN_TEMPLATE_NAME

    def __init__(self, tokenize: Tokenize, *, bos: int, eos: int) -> None:
        self._ids = tokenize
        self.bos = bos
        self.end_of_turn = eos

    def _turn(self, role: str, content: str) -> list[int]:
        if role not in _PLAIN_ROLE:
            raise DataError(f"unknown chat role {role!r} (expected one of {ROLES})")
        ids = self._ids(f"{_PLAIN_ROLE[role]}: {content}")
        if role == "assistant":
            ids.append(self.end_of_turn)
        return [*ids, *self._ids("\n")]

    def render(self, turns: Sequence[tuple[str, str]]) -> RenderedPrompt:
        u = _last_user(turns)
        head = [self.bos]
        for role, content in turns[:u]:
            head += self._turn(role, content)
        head += self._ids("User:")
        tail = self._ids("\n")
        for role, content in turns[u + 1 :]:
            tail += self._turn(role, content)
        tail += self._ids("Assistant:")
        return RenderedPrompt(tuple(head), tuple(self._ids(f" {turns[u][1]}")), tuple(tail))

    def response_ids(self, content: str) -> list[int]:
        return [*self._ids(f" {content}"), self.end_of_turn]


class ChatTemplate:
    """The tokenizer's own chat template, split around the last user turn's content."""

    def __init__(self, tokenizer: object, tokenize: Tokenize, *, bos: int, eos: int) -> None:
        self.tokenizer = tokenizer
        self._ids = tokenize
        self.bos = bos
        source = str(getattr(tokenizer, "chat_template", ""))
        self.name = "chat-" + hashlib.sha256(source.encode()).hexdigest()[:16]
        self.end_of_turn = self._find_end_of_turn(default=eos)

    def _apply(self, turns: Sequence[tuple[str, str]], *, generation_prompt: bool) -> str:
        apply = self.tokenizer.apply_chat_template  # type: ignore[attr-defined]
        messages = [{"role": r, "content": c} for r, c in turns]
        text = apply(messages, tokenize=False, add_generation_prompt=generation_prompt)
        return str(text)

    def _find_end_of_turn(self, *, default: int) -> int:
        """The first special token the template puts after an assistant's content."""
        from jinja2 import TemplateError

        try:
            text = self._apply([("user", "Hi"), ("assistant", _SENTINEL)], generation_prompt=False)
        except (TemplateError, ValueError, TypeError, KeyError, IndexError):
            return default
        if _SENTINEL not in text:
            return default
        special = set(getattr(self.tokenizer, "all_special_ids", ()))
        after = self._ids(text.split(_SENTINEL, 1)[1])
        return next((t for t in after if t in special), default)

    def render(self, turns: Sequence[tuple[str, str]]) -> RenderedPrompt:
        from jinja2 import TemplateError

        u = _last_user(turns)
        marked = [*turns[:u], ("user", _SENTINEL), *turns[u + 1 :]]
        try:
            text = self._apply(marked, generation_prompt=True)
        except (TemplateError, ValueError, TypeError, KeyError, IndexError) as exc:
            raise DataError(f"the tokenizer's chat template refused these turns: {exc}") from exc
        if text.count(_SENTINEL) != 1:
            raise DataError("the tokenizer's chat template does not show the user turn once")
        head_text, tail_text = text.split(_SENTINEL)
        head = self._ids(head_text)
        if not head or head[0] != self.bos:  # BOS exactly once, whether or not it renders one
            head = [self.bos, *head]
        user, tail = self._ids(turns[u][1]), self._ids(tail_text)
        return RenderedPrompt(tuple(head), tuple(user), tuple(tail))

    def response_ids(self, content: str) -> list[int]:
        return [*self._ids(content), self.end_of_turn]


def template_for(tokenizer: object, tokenize: Tokenize, *, bos: int, eos: int) -> PromptTemplate:
    """The tokenizer's chat template when it has one, else the plain template."""
    if getattr(tokenizer, "chat_template", None):
        return ChatTemplate(tokenizer, tokenize, bos=bos, eos=eos)
    return PlainTemplate(tokenize, bos=bos, eos=eos)
