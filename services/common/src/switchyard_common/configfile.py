"""Config files for the services: YAML with ``${VAR}`` references, validated by pydantic.

Needs the ``server`` extra (pyyaml, pydantic); the SDK itself does not.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from pydantic import BaseModel, ValidationError

_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_Model = TypeVar("_Model", bound="BaseModel")


class ConfigError(ValueError):
    """A config file is missing or invalid; the message names the bad key."""


class MissingVariableError(KeyError):
    """A config file refers to an environment variable that is not set."""

    def __str__(self) -> str:
        return (
            f"environment variable {self.args[0]} is not set (and the reference has no :-default)"
        )


def expand_env(text: str, environ: Mapping[str, str] | None = None) -> str:
    """Replaces ``${VAR}`` (required) and ``${VAR:-default}``; ``$${`` escapes a literal ``${``."""
    env = os.environ if environ is None else environ

    def replace(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if name in env:
            return env[name]
        if default is not None:
            return default
        raise MissingVariableError(name)

    parts = text.split("$${")
    return "${".join(_REFERENCE.sub(replace, part) for part in parts)


def describe_validation_error(error: ValidationError, prefix: str = "") -> str:
    """One indented line per problem, each naming its key path (``routes.0.model: ...``)."""
    lines = []
    for problem in error.errors():
        where = prefix + ".".join(str(p) for p in problem["loc"])
        lines.append(f"  {where + ': ' if where else ''}{problem['msg']}")
    return "\n".join(lines)


def load_config(path: Path, model: type[_Model]) -> _Model:
    """Reads ``path``, expands environment references and validates it as ``model``."""
    import yaml
    from pydantic import ValidationError

    try:
        raw = yaml.safe_load(expand_env(path.read_text()))
    except OSError as error:
        raise ConfigError(f"cannot read config {path}: {error.strerror}") from None
    except MissingVariableError as error:
        raise ConfigError(f"{path}: {error}") from None
    except yaml.YAMLError as error:
        # Only where and what: the snippet YAML would quote is the text after
        # ${VAR} expansion, which may hold a secret.
        raise ConfigError(f"{path}: not valid YAML: {_yaml_problem(error)}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    try:
        return model.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(f"{path}: invalid config\n{describe_validation_error(error)}") from None


def _yaml_problem(error: Exception) -> str:
    """A YAML error's problem and position, without the document text it would quote."""
    problem = getattr(error, "problem", None) or type(error).__name__
    mark = getattr(error, "problem_mark", None)
    if mark is None:
        return str(problem)
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}"
