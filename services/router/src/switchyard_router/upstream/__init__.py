"""The model-server side of a cluster (Envoy's upstream): endpoints and clusters
(``endpoints``), their connection pools (``connection_pool``), active health
(``health``), passive health (``outlier``), load reports (``load_reports``), the
reconnect pause (``backoff``) and which LoRA adapters each holds
(``adapter_residency``).
"""
