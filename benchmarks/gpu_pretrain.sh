#!/bin/bash
# One device call (device tool): install the carried wheels (.whl: deepspeed, webdataset, wids, mne …),
# then time pretraining of the large preset against the plain reference encoder on the GPU.
# Run with carry [".whl", "runs/demo/codes"]; output under $OUT/pretrain_large.log. Extra arguments go to
# benchmarks/pretrain_speed.py (e.g. `--profile --no-reference` for a profile of eager steps).
set -o pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 OUT=${OUT:-/tmp/out}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, deepspeed; print('torch', torch.__version__, 'deepspeed', deepspeed.__version__, torch.cuda.get_device_name())"
python3 benchmarks/pretrain_speed.py --codes runs/demo/codes --synthetic 32x32 --preset large --steps 30 --compile \
    micro_batch=32 "$@" 2>&1 | grep -v -i -E "warn|^\s*$|rank0" | tee $OUT/pretrain_large.log
