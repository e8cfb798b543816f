#!/usr/bin/env bash
# Redis for the router's fleet state (tests/test_fleet*.py, benchmarks/fleet_overhead.py):
# Debian's redis-server. The package does not start a server here; each test
# starts its own on a free port with `--save ''` (nothing written to disk).
set -euo pipefail
cd "$(dirname "$0")/../.."

command -v redis-server >/dev/null || scripts/apt-install.sh redis-server
