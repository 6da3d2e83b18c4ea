#!/usr/bin/env bash
# Installs the Debian packages advdiff builds and tests with. Idempotent: a
# package already installed is skipped, and apt-get is not called at all when
# nothing is missing. Run as root (or with sudo available).
#   scripts/setup.sh          build + run dependencies
#   scripts/setup.sh --test   also what the test suite uses (PyTorch/NumPy for
#                             cross-checks, clang for the sanitizer build)
set -euo pipefail

pkgs=(cmake make gcc g++ pkg-config
      lua5.4 liblua5.4-dev
      libopenblas-openmp-dev
      libdnnl-dev
      libstb-dev
      libreadline-dev
      zlib1g-dev
      dataset-fashion-mnist)
if [[ "${1:-}" == "--test" ]]; then
  pkgs+=(python3 python3-numpy python3-torch)
fi

missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]} == 0)); then
  echo "setup: all ${#pkgs[@]} packages present"
  exit 0
fi
echo "setup: installing ${missing[*]}"
SUDO=""
[[ $(id -u) -eq 0 ]] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "setup: done"
