#!/bin/bash
# Third device call: NeuroFM's model (large preset, asymmetric) in a bare PyTorch loop, eager and
# compiled, to split the DeepSpeed step's time into model and engine. Carry: .whl runs/demo/codes
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
python3 benchmarks/pretrain_speed.py --codes runs/demo/codes --synthetic 32x32 --preset large --steps 30 --compile \
    --plain-model --no-deepspeed --no-reference micro_batch=32 2>&1 | grep -v -i -E "warn|^\s*$|rank0" | tee $OUT/plain_model.log
