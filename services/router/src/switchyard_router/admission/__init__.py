"""Admission: the checks a request passes before its first attempt (``admission``):
API keys (``auth``), calls in progress (``overload``) and a stream's token meter
(``metering``); the counters they ask live in ``fleet``.
"""
