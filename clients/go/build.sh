#!/usr/bin/env bash
# Builds an example with Debian's Go toolchain and Go packages, in GOPATH mode
# (no module downloads): a throw-away GOPATH maps the import path
# switchyard.dev/switchyard onto this checkout.
#   clients/go/build.sh [OUTPUT] [COMMAND]
# COMMAND is a folder of cmd/ (default switchyard-example; switchyard-tools-example
# calls a tool); OUTPUT defaults to clients/go/bin/COMMAND.
set -euo pipefail
repo="$(cd "$(dirname "$0")/../.." && pwd)"
command="${2:-switchyard-example}"
out="$(realpath -m "${1:-$repo/clients/go/bin/$command}")"
gopath="$(mktemp -d)"
trap 'rm -rf "$gopath"' EXIT
mkdir -p "$gopath/src/switchyard.dev"
ln -s "$repo" "$gopath/src/switchyard.dev/switchyard"
cd "$gopath/src/switchyard.dev/switchyard/clients/go"
GOPATH="$gopath:/usr/share/gocode" GO111MODULE=off GOPROXY=off GOFLAGS= \
  go build -o "$out" "./cmd/$command"
echo "$out"
