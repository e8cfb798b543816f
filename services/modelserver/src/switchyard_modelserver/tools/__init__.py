"""Tool calling and structured output shared by the backends that run a model
themselves (llamacpp, vllm): JSON Schema checks, how tools reach a chat
template, and how tool calls are read back out of the generated text."""
