"""`switchyard bench`: load and latency benchmarking of a router or model server.

The pieces, one idea each: :mod:`~switchyard.bench.prompts` (what to send),
:mod:`~switchyard.bench.load` (closed- and open-loop load over gRPC),
:mod:`~switchyard.bench.progress` (the live line),
:mod:`~switchyard.bench.stats` (percentiles and the summary),
:mod:`~switchyard.bench.report` (table, JSON and HTML) and
:mod:`~switchyard.bench.command` (the command line).
"""

from switchyard.bench import command

__all__ = ["command"]
