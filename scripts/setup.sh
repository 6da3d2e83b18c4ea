#!/usr/bin/env bash
# Installs the Debian packages advdiff builds and tests with. Idempotent: a
# package already installed is skipped, and apt-get is not called at all when
# nothing is missing. Run as root (or with sudo available).
#   scripts/setup.sh          build + run dependencies
#   scripts/setup.sh --test   also what the test suite uses (PyTorch/NumPy for
#                             cross-checks, clang for the sanitizer build,
#                             Jupyter for the notebook test)
# When Jupyter is present, the advdiff kernel spec is installed at the end
# (jupyter/install.sh: system-wide as root, else for the current user).
set -euo pipefail

pkgs=(cmake make gcc g++ pkg-config
      lua5.4 liblua5.4-dev
      libopenblas-openmp-dev
      libdnnl-dev
      libstb-dev
      libreadline-dev
      zlib1g-dev
      dataset-fashion-mnist
      gnuplot-nox)
if [[ "${1:-}" == "--test" ]]; then
  pkgs+=(python3 python3-numpy python3-torch
         jupyter-client python3-ipykernel jupyter-nbconvert python3-nbconvert)
fi

missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]} == 0)); then
  echo "setup: all ${#pkgs[@]} packages present"
else
  echo "setup: installing ${missing[*]}"
  SUDO=""
  [[ $(id -u) -eq 0 ]] || SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  echo "setup: done"
fi
# the advdiff Jupyter kernel (issue 9), wherever Jupyter is installed
if command -v jupyter >/dev/null 2>&1 && /usr/bin/python3 -c 'import ipykernel' >/dev/null 2>&1; then
  "$(dirname "$0")/../jupyter/install.sh" || echo "setup: the advdiff Jupyter kernel was not installed"
fi
