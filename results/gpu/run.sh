#!/bin/bash
# On the GPU machine (the device tool), from the repository root:
#   bash .device/bootstrap.sh && . /tmp/bcc_env.sh && bash results/gpu/run.sh
# Writes the capture's output and JSON to $OUT (or /tmp).
set -uo pipefail
out=${OUT:-/tmp}
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
python3 -c "import torch, cupy; print('torch', torch.__version__, 'cupy', cupy.__version__)"
python3 -m ramwatchd doctor | grep -v "^OK    tracepoint"
python3 -m ramwatchd run --json "$out/pinned_proof.json" -- python3 results/gpu/pinned_proof.py
