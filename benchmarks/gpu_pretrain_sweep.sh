#!/bin/bash
# For the next GPU session (not run yet): where does DeepSpeed's 40 % go on one GPU? The large preset,
# compiled, under ZeRO 0/1/2 and DeepSpeed bf16 vs torch_autocast (fp32 weights, as in the bare loop
# that reached 308k tokens/s). Carry: .whl runs/demo/codes. About 6 minutes on an H100.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 OUT=${OUT:-/tmp/out}
for variant in "zero_stage=2 precision=bf16" "zero_stage=1 precision=bf16" "zero_stage=0 precision=bf16" \
               "zero_stage=0 precision=autocast_bf16" "zero_stage=2 precision=autocast_bf16"; do
    echo "== $variant"
    python3 benchmarks/pretrain_speed.py --codes runs/demo/codes --synthetic 32x32 --preset large --steps 30 --compile \
        --only-compiled --no-reference micro_batch=32 $variant 2>&1 | grep -E "^neurofm|Error" | tee -a $OUT/sweep.log
done
echo "== profile: 3 eager DeepSpeed steps (ZeRO-2, bf16), checkpoint save excluded"
python3 benchmarks/pretrain_speed.py --codes runs/demo/codes --synthetic 32x32 --preset large --steps 4 --no-reference \
    --no-deepspeed --profile micro_batch=32 2>&1 | grep -v -i -E "warn|rank0" | tail -32 | tee -a $OUT/sweep.log
