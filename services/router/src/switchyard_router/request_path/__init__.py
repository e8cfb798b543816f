"""The request path after admission: routes (``routing``), the attempt loop that
relays raw bytes (``proxy``), retries and their budget (``retry``), resumed streams
(``resume``), spans (``spans``) and the little wire format it reads (``wire``).
"""
