#!/bin/bash
# One device call: finetune the demo release on the Muse face/house shards on the GPU (Accelerate, bf16,
# model + 2 baselines). Carry: .whl runs/demo/release runs/examples/muse/shards runs/examples/targets
set -o pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 OUT=${OUT:-/tmp/out}
SECONDS=0
python3 -m neurofm.cli finetune release=runs/demo/release shards=runs/examples/muse/shards out=/tmp/ft task=vision targets=runs/examples/targets/haxby_efficientnet target_key=event group_by=run mixed_precision=bf16 mode=full epochs=10 patience=20 2>&1 | grep -v -i warn | tee $OUT/finetune_gpu.log
echo "finetune wall: ${SECONDS} s (model + 2 baselines, 10 epochs each, mode full, bf16)" | tee -a $OUT/finetune_gpu.log
