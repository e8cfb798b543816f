"""The API key: read from an environment variable or a mounted file, and
scrubbed from every message that leaves the process."""

from __future__ import annotations

import os
import re

from switchyard_modelserver.backends.cloud.options import CloudOptions


class Secret:
    """An API key: its value is only handed to the SDK, and scrubbed from text."""

    def __init__(self, value: str | None) -> None:
        self._value = value or None

    def reveal(self) -> str | None:
        return self._value

    def scrub(self, text: str) -> str:
        """``text`` with the key (and any long token shaped like one) replaced."""
        if self._value:
            text = text.replace(self._value, "[redacted]")
        # Providers echo keys back in error bodies (OpenAI: "Incorrect API key provided: ...").
        return _KEY_LIKE.sub("[redacted]", text)

    def __repr__(self) -> str:
        return "Secret([redacted])" if self._value else "Secret(None)"


# Vendor key shapes (sk-..., sk-ant-..., key-...), masked or not.
_KEY_LIKE = re.compile(r"\b(?:sk|pk|key|tok)-[A-Za-z0-9_\-*.]{12,}")


def load_secret(options: CloudOptions, *, required: bool, kind: str) -> Secret:
    """Reads the API key named in config; a missing one is a config error naming the key."""
    if options.api_key_env:
        value = os.environ.get(options.api_key_env, "").strip()
        if not value:
            raise ValueError(
                f"backend.api_key_env: environment variable {options.api_key_env} is not set"
            )
        return Secret(value)
    if options.api_key_file:
        try:
            value = options.api_key_file.read_text().strip()
        except OSError as error:
            raise ValueError(
                f"backend.api_key_file: cannot read {options.api_key_file}: {error.strerror}"
            ) from None
        if not value:
            raise ValueError(f"backend.api_key_file: {options.api_key_file} is empty")
        return Secret(value)
    if required:
        raise ValueError(f"backend: the {kind} backend needs api_key_env or api_key_file")
    return Secret(None)
