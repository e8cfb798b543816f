"""Prometheus metrics of the model server (served on ``metrics_listen``).

Labels are bounded: ``model`` is a served model id (or ``unknown`` for names
that resolve to nothing), ``method`` an RPC name, ``code`` a gRPC status name.
No request ids, no free text.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_TOKEN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1)

REQUESTS = Counter(
    "switchyard_modelserver_requests",
    "Generation requests finished, by method, model and gRPC status code.",
    ["method", "model", "code"],
)
REQUEST_DURATION = Histogram(
    "switchyard_modelserver_request_duration_seconds",
    "Time from a request's arrival to its end.",
    ["method", "model"],
    buckets=_LATENCY_BUCKETS,
)
TIME_TO_FIRST_TOKEN = Histogram(
    "switchyard_modelserver_time_to_first_token_seconds",
    "Time from a request's arrival to its first generated token.",
    ["model"],
    buckets=_LATENCY_BUCKETS,
)
TIME_PER_OUTPUT_TOKEN = Histogram(
    "switchyard_modelserver_time_per_output_token_seconds",
    "Mean time between output tokens after the first, per request.",
    ["model"],
    buckets=_TOKEN_BUCKETS,
)
INPUT_TOKENS = Counter("switchyard_modelserver_input_tokens", "Prompt tokens processed.", ["model"])
CACHED_INPUT_TOKENS = Counter(
    "switchyard_modelserver_cached_input_tokens",
    "Prompt tokens taken from the engine's prefix cache (a part of input_tokens).",
    ["model"],
)
OUTPUT_TOKENS = Counter("switchyard_modelserver_output_tokens", "Tokens generated.", ["model"])
QUEUE_DEPTH = Gauge(
    "switchyard_modelserver_queue_depth", "Requests waiting for a model.", ["model"]
)
IN_FLIGHT = Gauge(
    "switchyard_modelserver_in_flight_requests", "Requests generating now.", ["model"]
)
MODEL_READY = Gauge(
    "switchyard_modelserver_model_ready",
    "1 when the model serves (loaded, or loadable on demand), else 0.",
    ["model"],
)
MODEL_LOADED = Gauge(
    "switchyard_modelserver_model_loaded", "1 while the model is in memory, else 0.", ["model"]
)
MODEL_LOADS = Counter(
    "switchyard_modelserver_model_loads",
    "Models loaded (on demand, by an operator, or a replaced file's new copy).",
    ["model"],
)
MODEL_UNLOADS = Counter(
    "switchyard_modelserver_model_unloads",
    "Models unloaded, by reason: lru (to make room), operator, removed, replaced.",
    ["model", "reason"],
)


def record_request(
    *,
    method: str,
    model: str,
    code: str,
    duration: float,
    prompt_tokens: int,
    completion_tokens: int,
    time_to_first_token: float | None,
    cached_prompt_tokens: int = 0,
) -> None:
    """Records one finished generation request."""
    REQUESTS.labels(method, model, code).inc()
    REQUEST_DURATION.labels(method, model).observe(duration)
    INPUT_TOKENS.labels(model).inc(prompt_tokens)
    CACHED_INPUT_TOKENS.labels(model).inc(cached_prompt_tokens)
    OUTPUT_TOKENS.labels(model).inc(completion_tokens)
    if time_to_first_token is not None:
        TIME_TO_FIRST_TOKEN.labels(model).observe(time_to_first_token)
        if completion_tokens > 1:
            TIME_PER_OUTPUT_TOKEN.labels(model).observe(
                (duration - time_to_first_token) / (completion_tokens - 1)
            )
