#!/usr/bin/env bash
# Every benchmark on a CUDA GPU with SD 1.4's and SDXL's shapes (random weights, built offline) at their
# native sizes (512, 1024), fp16; prints one JSON object and writes it to benchmarks/results/gpu.json.
#
#     bash benchmarks/gpu.sh                    # the full run
#     bash benchmarks/gpu.sh --models sd14      # one model; any flag of benchmarks/gpu.py passes through
#
# What it measures and how: see the docstring of benchmarks/gpu.py. A dry run of the same code on a CPU:
#     python benchmarks/gpu.py --device cpu --small
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p benchmarks/results
python benchmarks/gpu.py --device cuda --out benchmarks/results/gpu.json "$@"
