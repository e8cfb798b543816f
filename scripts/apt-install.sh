#!/usr/bin/env bash
# Installs Debian packages for a set-up step: `scripts/apt-install.sh PACKAGE...`.
# Several steps may run at once (scripts/setup.sh runs them in parallel), so it
# waits for apt's locks: DPkg::Lock::Timeout covers dpkg's, not the package
# lists' lock that `apt-get update` takes, hence the retries.
set -euo pipefail
(($#)) || exit 0
sudo=()
if [[ "$(id -u)" != 0 ]]; then
  if ! sudo -n true 2>/dev/null; then
    echo "setup: installing $* needs root or password-less sudo; install them and re-run" >&2
    exit 1
  fi
  sudo=(sudo)
fi
echo "setup: apt-get install $*"
for attempt in $(seq 1 60); do
  "${sudo[@]}" apt-get -o DPkg::Lock::Timeout=600 update -qq && break
  ((attempt < 60)) || { echo "setup: apt-get update kept failing" >&2; exit 1; }
  sleep 10
done
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 \
  install -y -qq --no-install-recommends "$@" >/dev/null
