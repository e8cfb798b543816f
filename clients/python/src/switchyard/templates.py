"""Prompt templates: text with ``{name}`` placeholders, filled in before a call.

The syntax is Python's ``str.format`` restricted to named fields: ``{name}``,
optionally with a conversion or format spec (``{name!r}``, ``{price:.2f}``);
``{{`` and ``}}`` are literal braces. Positional (``{}``, ``{0}``), attribute
and index fields (``{user.name}``, ``{items[0]}``) are refused when the template
is made, so rendering can never reach into the objects passed in.

from switchyard import ChatPromptTemplate, PromptTemplate

PromptTemplate("Translate {text} into {language}.").format(text="cheese", language="French")
ChatPromptTemplate([("system", "You answer in {language}."), ("user", "{question}")])
"""

from __future__ import annotations

import string
from collections.abc import Mapping, Sequence
from typing import Self

from switchyard.errors import MissingVariablesError, TemplateError
from switchyard.types import Message

CHAT_ROLES = ("system", "user", "assistant")
_PREVIEW_CHARS = 48


def _preview(text: str) -> str:
    return repr(text if len(text) <= _PREVIEW_CHARS else text[: _PREVIEW_CHARS - 3] + "...")


def _parse_variables(template: str) -> tuple[str, ...]:
    """The template's variable names in order of first use; raises TemplateError."""
    names: list[str] = []
    try:
        fields = list(string.Formatter().parse(template))
    except ValueError as error:  # unbalanced braces
        raise TemplateError(
            f"template {_preview(template)}: {error} (write {{{{ or }}}} for a literal brace)"
        ) from None
    for _, field, spec, _ in fields:
        if field is None:
            continue
        if not field.isidentifier():
            hint = (
                "positional fields are not supported"
                if field == "" or field.isdigit()
                else ("attribute and index access are not supported")
            )
            raise TemplateError(
                f"template {_preview(template)}: placeholder {{{field}}} must be a plain name"
                f" ({hint}; write {{{{ or }}}} for a literal brace)"
            )
        if spec and ("{" in spec or "}" in spec):
            raise TemplateError(
                f"template {_preview(template)}: placeholder {{{field}}} has a nested field in its"
                " format spec, which is not supported"
            )
        if field not in names:
            names.append(field)
    return tuple(names)


def _merge(
    values: Mapping[str, object] | None, keywords: Mapping[str, object]
) -> dict[str, object]:
    merged = dict(values or {})
    merged.update(keywords)
    return merged


class PromptTemplate:
    """A completion prompt with ``{name}`` placeholders.

    Args:
        template: the text; ``{{`` and ``}}`` are literal braces.
        partial_variables: values fixed now (see :meth:`partial`).

    Raises:
        TemplateError: the template does not parse, or uses a field that is not a plain name.
    """

    def __init__(
        self, template: str, *, partial_variables: Mapping[str, object] | None = None
    ) -> None:
        self.template = template
        self._all_variables = _parse_variables(template)
        self.partial_variables: dict[str, object] = dict(partial_variables or {})

    @property
    def variables(self) -> tuple[str, ...]:
        """The names still to be given when formatting, in order of first use."""
        return tuple(v for v in self._all_variables if v not in self.partial_variables)

    def format(self, values: Mapping[str, object] | None = None, /, **kwargs: object) -> str:
        """Renders the template; values may come as a mapping, keywords or both.

        Values the template does not use are ignored (a chain passes all it has).

        Raises:
            MissingVariablesError: naming every variable without a value.
        """
        merged = {**self.partial_variables, **_merge(values, kwargs)}
        missing = [name for name in self._all_variables if name not in merged]
        if missing:
            raise MissingVariablesError(
                missing, self.variables, f"PromptTemplate({_preview(self.template)})"
            )
        try:
            return self.template.format_map(merged)
        except (ValueError, TypeError) as error:  # a value its format spec cannot take
            raise TemplateError(
                f"PromptTemplate({_preview(self.template)}): cannot render a value: {error}"
            ) from error

    def partial(self, **values: object) -> Self:
        """A copy with some variables fixed (e.g. a language shared by every call)."""
        return type(self)(self.template, partial_variables={**self.partial_variables, **values})

    def __repr__(self) -> str:
        return f"PromptTemplate({self.template!r})"


MessageTemplate = tuple[str, str] | Message


class ChatPromptTemplate:
    """A conversation whose turns are templates: ``[("system", "..."), ("user", "{question}")]``.

    Args:
        messages: ``(role, template)`` pairs or :class:`~switchyard.Message` objects,
            role ``system``, ``user`` or ``assistant``.
        partial_variables: values fixed now (see :meth:`partial`).

    Raises:
        TemplateError: an unknown role, or a turn whose template does not parse.
    """

    def __init__(
        self,
        messages: Sequence[MessageTemplate],
        *,
        partial_variables: Mapping[str, object] | None = None,
    ) -> None:
        if not messages:
            raise TemplateError("ChatPromptTemplate needs at least one message")
        turns: list[tuple[str, PromptTemplate]] = []
        for index, message in enumerate(messages):
            role, text = (
                (message.role, message.content) if isinstance(message, Message) else message
            )
            if role not in CHAT_ROLES:
                raise TemplateError(
                    f"ChatPromptTemplate message {index}: unknown role {role!r}"
                    f" (one of {', '.join(CHAT_ROLES)})"
                )
            turns.append((role, PromptTemplate(text)))
        self._turns = turns
        self.partial_variables: dict[str, object] = dict(partial_variables or {})

    @property
    def messages(self) -> list[tuple[str, str]]:
        """The ``(role, template)`` pairs."""
        return [(role, turn.template) for role, turn in self._turns]

    @property
    def variables(self) -> tuple[str, ...]:
        """The names still to be given when formatting, in order of first use."""
        names: list[str] = []
        for _, turn in self._turns:
            names += [v for v in turn.variables if v not in names]
        return tuple(v for v in names if v not in self.partial_variables)

    def format_messages(
        self, values: Mapping[str, object] | None = None, /, **kwargs: object
    ) -> list[Message]:
        """Renders every turn; values may come as a mapping, keywords or both.

        Raises:
            MissingVariablesError: naming every variable without a value.
        """
        merged = {**self.partial_variables, **_merge(values, kwargs)}
        missing = [name for name in self.variables if name not in merged]
        if missing:
            first_turn = self._turns[0][1].template
            raise MissingVariablesError(
                missing, self.variables, f"ChatPromptTemplate({_preview(first_turn)}, ...)"
            )
        return [Message(role=role, content=turn.format(merged)) for role, turn in self._turns]

    def partial(self, **values: object) -> Self:
        """A copy with some variables fixed."""
        return type(self)(
            [Message(role, text) for role, text in self.messages],
            partial_variables={**self.partial_variables, **values},
        )

    def __repr__(self) -> str:
        return f"ChatPromptTemplate({self.messages!r})"
