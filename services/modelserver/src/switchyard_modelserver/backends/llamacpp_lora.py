"""LoRA adapters on a llama.cpp model copy, switched per request on its worker thread.

llama.cpp keeps adapters on the model (``llama_adapter_lora_init``) and applies
a set of them to the context (``llama_set_adapters_lora``). One context serves
one generation at a time, so each job sets the adapter it wants before it
runs: setting is a pointer swap (microseconds), but the KV cache computed under
another adapter is wrong for this one, so a switch drops the cached prompt
prefix and the prompt is evaluated again. Requests that keep the same adapter
(or none) reuse the cache as before. Everything here runs on the copy's worker
thread, between generations.
"""

from __future__ import annotations

import ctypes
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc

from switchyard_common.status import StatusError

if TYPE_CHECKING:
    from llama_cpp import Llama

log = logging.getLogger(__name__)

SCALE = 1.0
"""How strongly an adapter applies (its own alpha / rank scaling comes on top)."""


@dataclass
class AdapterSet:
    """The adapters loaded on one model copy, and the one its context applies now."""

    loaded: dict[str, Any] = field(default_factory=dict)
    """Adapter name -> llama.cpp adapter handle."""
    active: str | None = None


def use_adapter(llama: Llama, adapters: AdapterSet, name: str | None, path: Path | None) -> bool:
    """Applies adapter ``name`` (loading it from ``path`` first if needed) or none;
    True when the context changed adapter, so its cached prompt is no longer valid."""
    import llama_cpp

    if name == adapters.active:
        return False
    ctx = llama._ctx.ctx
    if name is None:
        llama_cpp.llama_set_adapters_lora(ctx, None, 0, None)
    else:
        handle = adapters.loaded.get(name)
        if handle is None:
            assert path is not None
            handle = llama_cpp.llama_adapter_lora_init(llama._model.model, str(path).encode())
            if not handle:
                raise StatusError(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f"adapter {name!r} did not load from {path.name}: is it a GGUF LoRA "
                    "adapter made for this model?",
                    reason="ADAPTER_UNAVAILABLE",
                    metadata={"adapter": name},
                )
            adapters.loaded[name] = handle
            log.info("adapter %s loaded from %s", name, path.name)
        handles = (llama_cpp.llama_adapter_lora_p_ctypes * 1)(handle)
        scales = (ctypes.c_float * 1)(SCALE)
        if llama_cpp.llama_set_adapters_lora(ctx, handles, 1, scales) != 0:
            raise StatusError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"adapter {name!r} could not be applied to the model",
                reason="ADAPTER_UNAVAILABLE",
                metadata={"adapter": name},
            )
    adapters.active = name
    llama.n_tokens = 0  # the KV cache was computed under the other adapter
    return True


def load_adapter(llama: Llama, adapters: AdapterSet, name: str, path: Path) -> None:
    """Loads an adapter without applying it (an operator's LoadAdapter)."""
    previous = adapters.active
    use_adapter(llama, adapters, name, path)
    use_adapter(llama, adapters, previous, None)


def free_adapter(llama: Llama, adapters: AdapterSet, name: str) -> None:
    """Frees an adapter (taking it off the context first if it is applied)."""
    import llama_cpp

    handle = adapters.loaded.pop(name, None)
    if handle is None:
        return
    if adapters.active == name:
        llama_cpp.llama_set_adapters_lora(llama._ctx.ctx, None, 0, None)
        adapters.active = None
        llama.n_tokens = 0
    llama_cpp.llama_adapter_lora_free(handle)
    log.info("adapter %s freed", name)
