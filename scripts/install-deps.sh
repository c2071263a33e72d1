#!/usr/bin/env bash
# Installs the Debian packages MambaKit builds against (and python3 for the notebooks' tooling later).
# Idempotent; uses sudo when not root.
set -euo pipefail
pkgs=(libsndfile1-dev zlib1g-dev libopenblas-dev)
missing=()
for p in "${pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
