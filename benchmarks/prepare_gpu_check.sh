#!/usr/bin/env bash
# Prepares the GPU check on this (networked) machine: what a bare, offline CUDA machine lacks travels beside
# the working tree, in two git-ignored folders that the device run must carry:
#   .whl/           the transformers wheel this project is built against (the CUDA image ships an older one) and
#                   torchao's (weight-only int8 / int4)
#   .gpu/fixtures   a copy of ../shared/fixtures, the reference outputs the parity tests compare against
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux2014_x86_64 -d .whl transformers==5.24.0
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 -d .whl torchao==0.18.0
mkdir -p .gpu && rm -rf .gpu/fixtures && cp -r ../shared/fixtures .gpu/fixtures
du -sh .whl .gpu
