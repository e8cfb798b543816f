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

scripts/apt-install.sh "${missing[@]}"

typescript=clients/typescript
stamp="$typescript/node_modules/.switchyard-lock"
if [[ ! -f "$stamp" ]] || ! cmp -s "$stamp" "$typescript/package-lock.json"; then
  echo "setup: npm ci in $typescript"
  (cd "$typescript" && npm ci --no-audit --no-fund --loglevel=error)
  cp "$typescript/package-lock.json" "$stamp"
fi
