"""The cloud backends (openai, anthropic, ollama) and what they share.

- ``options``: the provider's address, where the API key comes from, the models
  served (alias -> provider model id, capabilities, context length), timeouts,
  the SDK's own retries, the startup check and the health rules.
- ``api_key``: the key, read from an environment variable or a mounted file and
  kept out of every message that leaves the process.
- ``errors`` (with ``retry_after``): the one table that turns a provider's HTTP
  failures into gRPC statuses, documented in the README.
- ``transport``: the HTTP client every provider uses: the caller's deadline as
  its timeout and, with tracing on, one CLIENT span per HTTP request.
- ``health``: a model turns UNAVAILABLE after consecutive provider failures, or
  at once when the provider rejects the credentials, and READY again when a
  probe of the provider succeeds.
- ``backend``: the base class the three providers (``openai``, ``anthropic``,
  ``ollama``) implement.
"""

import logging

# The HTTP and SDK loggers write every request's URL (query strings included,
# where some gateways carry keys) and, at DEBUG, request options: keep them
# quiet whenever any cloud backend is imported.
for _name in ("httpx2", "httpcore2", "openai", "anthropic"):
    logging.getLogger(_name).setLevel(logging.WARNING)
