"""What an endpoint's ListModels says of its models, for the picker: the LoRA adapters
each holds in memory (adapter affinity) and what each can do (routing by capability).

Read off the request path (``Endpoint.read_models``); the picker reads plain dicts.
"""

from __future__ import annotations

from switchyard.v1 import llm_service_pb2 as pb
from switchyard_router.load_balancing.capabilities import mask_of


def loaded_adapters(response: pb.ListModelsResponse) -> dict[str, frozenset[str]]:
    """The adapters in memory per model name (its id and each alias)."""
    held: dict[str, frozenset[str]] = {}
    for model in response.models:
        loaded = frozenset(a.name for a in model.adapters if a.loaded)
        for name in (model.id, *model.aliases):
            held[name] = loaded
    return held


def capabilities_by_model(response: pb.ListModelsResponse) -> dict[str, int]:
    """Each model's capabilities as a bit set (``capabilities``), per model name (its id
    and each alias)."""
    by_model: dict[str, int] = {}
    for model in response.models:
        mask = mask_of(model.capabilities)
        for name in (model.id, *model.aliases):
            by_model[name] = mask
    return by_model
