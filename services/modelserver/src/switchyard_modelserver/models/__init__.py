"""Model lifecycle: which models exist, which are in memory, and how operators change that.

The catalog of ids, aliases and states (``catalog``), the memory budget with its
holds and evictions (``residency``), LoRA adapters' whereabouts (``adapters``),
per-model defaults (``model_defaults``) and ModelAdminService (``model_admin``).
"""
