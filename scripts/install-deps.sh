#!/usr/bin/env bash
# Installs the Debian packages MambaKit builds against, Open MPI (data-parallel training: mambakit loads libmpi at
# run time, and the test suite launches mpirun), and those that execute notebooks/ (Jupyter's nbconvert, the
# Python kernel, matplotlib, numpy; NotebookTests runs them). Idempotent; uses sudo when not root.
set -euo pipefail
pkgs=(libsndfile1-dev libsoxr-dev zlib1g-dev libopenblas-dev openmpi-bin libopenmpi-dev
      jupyter-nbconvert python3-ipykernel python3-matplotlib python3-numpy)
missing=()
for p in "${pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
