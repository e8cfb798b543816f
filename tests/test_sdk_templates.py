"""Prompt templates: rendering, escaping and the errors a user sees (pure Python, no server)."""

from __future__ import annotations

import pytest

from switchyard import (
    ChatPromptTemplate,
    Message,
    MissingVariablesError,
    PromptTemplate,
    TemplateError,
)


def test_prompt_template_fills_named_fields_from_a_mapping_and_keywords() -> None:
    template = PromptTemplate("Translate {text} into {language}.")
    assert template.variables == ("text", "language")
    assert template.format({"text": "cheese"}, language="French") == (
        "Translate cheese into French."
    )


def test_double_braces_are_literal_braces() -> None:
    template = PromptTemplate('Answer as JSON like {{"city": "{example}"}} about {country}.')
    assert template.variables == ("example", "country")
    assert template.format(example="Rome", country="Italy") == (
        'Answer as JSON like {"city": "Rome"} about Italy.'
    )


def test_missing_variables_are_all_named_with_what_the_template_takes() -> None:
    template = PromptTemplate("{greeting}, {name}! Today is {day}.")
    with pytest.raises(MissingVariablesError) as caught:
        template.format(greeting="Hello")
    assert caught.value.missing == ("name", "day")
    assert caught.value.template_variables == ("greeting", "name", "day")
    message = str(caught.value)
    assert "missing variables 'name', 'day'" in message
    assert "it takes: greeting, name, day" in message
    assert isinstance(caught.value, KeyError)  # code catching KeyError keeps working


def test_unused_values_are_ignored() -> None:
    assert PromptTemplate("Hi {name}").format(name="Ada", unused="x") == "Hi Ada"


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("Hello {}", "positional fields are not supported"),
        ("Hello {0}", "positional fields are not supported"),
        ("Hello {user.name}", "attribute and index access are not supported"),
        ("Hello {items[0]}", "attribute and index access are not supported"),
        ("Hello {name", "expected '}'"),
        ("Hello name}", "Single '}'"),
    ],
)
def test_malformed_templates_are_refused_when_made(text: str, complaint: str) -> None:
    with pytest.raises(TemplateError, match=r"\{\{ or \}\}") as caught:
        PromptTemplate(text)
    assert complaint in str(caught.value)


def test_partial_fixes_some_variables() -> None:
    template = PromptTemplate("Say {word} in {language}.").partial(language="German")
    assert template.variables == ("word",)
    assert template.format(word="hello") == "Say hello in German."


def test_chat_template_renders_every_turn() -> None:
    template = ChatPromptTemplate(
        [("system", "You speak {language}."), Message("user", "What is {thing}?")]
    )
    assert template.variables == ("language", "thing")
    assert template.format_messages(language="Dutch", thing="tea") == [
        Message("system", "You speak Dutch."),
        Message("user", "What is tea?"),
    ]


def test_chat_template_names_missing_variables_across_turns() -> None:
    template = ChatPromptTemplate([("system", "You speak {language}."), ("user", "{question}")])
    with pytest.raises(MissingVariablesError) as caught:
        template.format_messages()
    assert caught.value.missing == ("language", "question")


def test_chat_template_refuses_an_unknown_role() -> None:
    with pytest.raises(TemplateError, match=r"unknown role 'robot'.*system, user, assistant"):
        ChatPromptTemplate([("robot", "beep")])


def test_a_value_its_format_spec_cannot_take_names_the_template() -> None:
    template = PromptTemplate("Item {count:d} of {total}")
    assert template.format(count=3, total=5) == "Item 3 of 5"
    with pytest.raises(TemplateError) as caught:
        template.format(count="three", total=5)
    message = str(caught.value)
    assert "PromptTemplate('Item {count:d} of {total}')" in message
    assert "Unknown format code 'd'" in message
    chat = ChatPromptTemplate([("user", "{n:.2f}")])
    with pytest.raises(TemplateError, match="cannot render"):
        chat.format_messages(n="x")
