#!/usr/bin/env bash
# Sets up, builds and runs the main job: experiments/quickstart.lua, the
# paper's adversarial fine-tuning end to end on Fashion-MNIST (pretraining, the
# protocol, the evaluation table). Arguments pass through to the script, e.g.
#   bash scripts/main.sh --set scale=tiny        (a few minutes)
#   bash scripts/main.sh --set scale=full --set device=cuda
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
jobs=$(nproc 2>/dev/null || echo 2)
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j"$jobs"
# Waiting OpenMP threads sleep instead of spinning: on a shared or busy
# machine spinning threads fight the other processes for the cores and a step
# took 3-4 times longer in our measurements. OMP_WAIT_POLICY=active restores spinning.
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-passive}"
exec build/advdiff experiments/quickstart.lua "$@"
