#!/usr/bin/env bash
# The Go and TypeScript clients: Debian's Go toolchain and Go gRPC packages
# (GOPATH builds, no module downloads), the Go protoc plugins `buf generate`
# runs, Node.js and npm (when the machine lacks them), and the pinned npm
# packages of clients/typescript (protoc-gen-es, connect-node, tsx).
# Quick when everything is in place.
set -euo pipefail
cd "$(dirname "$0")/../.."

apt_packages=(
  golang-go golang-google-grpc-dev golang-github-golang-protobuf-1-5-dev
  golang-google-protobuf-dev golang-google-genproto-dev protoc-gen-go protoc-gen-go-grpc
)
missing=()
for package in "${apt_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "ok installed" \
    || missing+=("$package")
done
command -v node >/dev/null || missing+=(nodejs)
command -v npm >/dev/null || missing+=(npm)

if ((${#missing[@]})); then
  echo "setup: apt-get install ${missing[*]}"
  sudo=()
  [[ $(id -u) == 0 ]] || sudo=(sudo)
  # The package lists' lock is not covered by DPkg::Lock::Timeout: wait for it.
  for attempt in $(seq 1 60); do
    "${sudo[@]}" apt-get -o DPkg::Lock::Timeout=600 update -qq && break
    ((attempt < 60)) || exit 1
    sleep 10
  done
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 \
    install -y -qq --no-install-recommends "${missing[@]}"
fi

typescript=clients/typescript
stamp="$typescript/node_modules/.switchyard-lock"
if [[ ! -f "$stamp" ]] || ! cmp -s "$stamp" "$typescript/package-lock.json"; then
  echo "setup: npm ci in $typescript"
  (cd "$typescript" && npm ci --no-audit --no-fund --loglevel=error)
  cp "$typescript/package-lock.json" "$stamp"
fi
