"""The HTTP front: the OpenAI and Anthropic APIs on the router's request path."""
