#!/usr/bin/env bash
# Installs what distml needs on a Debian machine (as root, with apt-get), only what is missing.
#   scripts/setup.sh          build, run and test dependencies
#   scripts/setup.sh --bench  also the peers the benchmarks compare against
set -euo pipefail

# What each package is for (README "Dependencies" repeats this):
pkgs=(
  build-essential cmake pkg-config # compiler and build
  libopenblas-dev                  # dense math (CBLAS sgemm) for the models
  zlib1g-dev                       # reading gzipped IDX files
  libjansson-dev                   # JSON: safetensors headers, metrics, configs
  libsodium-dev                    # HMAC-SHA256 for authenticated joining (DISTML_TOKEN)
  openmpi-bin libopenmpi-dev       # the mpi communicator backend and mpirun
  dataset-fashion-mnist            # the real data set the main job trains on
  clang libclang-rt-14-dev         # libFuzzer targets and sanitizer runtimes
  python3-numpy                    # the test that reads our safetensors files from Python
  clang-format                     # the formatting check of the test suite
  procps                           # pgrep, used by the tests that kill a worker
)
if [[ "${1:-}" == "--bench" ]]; then
  pkgs+=(
    python3-torch       # PyTorch (and DDP with gloo) as the peer for training benchmarks
    libtbb-dev          # oneTBB task_group, the peer for the task-pool benchmark
    python3-distributed # Dask distributed, the peer for the task-farm benchmark
    hyperfine
  )
fi

missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}" >&2
  if [[ $(id -u) -ne 0 ]]; then
    echo "setup: these packages are missing and installing them needs root (run with sudo)" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
