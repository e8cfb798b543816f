#!/usr/bin/env bash
# A real Prometheus for the tests (tests/test_prometheus.py): Debian's
# `prometheus` package (2.42) brings the server and `promtool`. The package
# does not start a server by itself here: the tests start their own, on a free
# port with its own storage in a temporary folder.
set -euo pipefail
cd "$(dirname "$0")/../.."

if ! command -v prometheus >/dev/null || ! command -v promtool >/dev/null; then
  scripts/apt-install.sh prometheus
fi
