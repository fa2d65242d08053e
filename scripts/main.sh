#!/usr/bin/env bash
# The main job: set up, build, then train the 784-256-10 MLP on Fashion-MNIST with 2 workers
# (data-parallel, all-reduce over loopback), 10 epochs, saving the model. Extra flags are passed on.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/build.sh build >/dev/null
exec build/distml train -n 2 --data fashion-mnist --model mlp --hidden 256 --epochs 10 \
  --save fashion-mlp.safetensors "$@"
