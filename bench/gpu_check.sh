#!/usr/bin/env bash
# GPU check, for a machine with CUDA and a Python that already has torch (e.g. the lent device):
# the CUDA tests, a short bf16 training run on the demo corpus, its evaluation, and the benchmark on cuda.
# Usage: bash bench/gpu_check.sh [OUT_DIR]     (jieba wheels in .whl/ are installed first if present)
set -euo pipefail
out=${1:-/tmp/kefu-gpu}
mkdir -p "$out"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
export PYTHONUNBUFFERED=1
nvidia-smi -L || true
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
python3 -m pytest -q -p no:cacheprovider -p no:asyncio tests/test_model.py tests/test_sampling.py tests/test_train.py \
  -k "cuda or learned_by_heart or complete_version" 2>&1 | grep -E "^E |passed|failed" | head -30 || true
python3 -m llmcore train --arch transformer --models "$out/models" --max-minutes 1 --promote --no-progress --device cuda | tail -1
python3 -m llmcore eval --models "$out/models" --data llmcore/data/demo_faq.chat.jsonl --device cuda
python3 bench/train.py --device cuda --data llmcore/data/demo_faq.chat.jsonl --steps 50
