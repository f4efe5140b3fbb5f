#!/usr/bin/env bash
# The CIFAR-10 benchmarks' GPU budget on one CUDA machine, as fixed on 2026-11-24 before any of
# these runs existed (see the issue notes): first the CUDA checks, then the QAT variants at the
# same time (one GPU has room for several ResNet-20 runs; cifar_lowbit merges their rows under a
# lock), then the precision comparison. Each writes benchmarks/results/<name>_cuda.{json,md}.
#
#     bash benchmarks/cifar_gpu_budget.sh          # logs in benchmarks/logs/
set -euo pipefail
cd "$(dirname "$0")"
mkdir -p logs
python -m pytest -q ../tests/test_cuda.py
# the declared 60-epoch budget (the script's --device cuda default), LSQ's KD setting
python cifar_lowbit.py --device cuda --only w4a4 --distill --freeze-bn-epoch 0 > logs/w4a4.log 2>&1 &
# 2-bit and ternary let BN use batch statistics (frozen from epoch 0 they stall or diverge)
python cifar_lowbit.py --device cuda --only w2a2 --distill > logs/w2a2.log 2>&1 &
python cifar_lowbit.py --device cuda --only ternary > logs/ternary.log 2>&1 &
wait
python cifar_precision.py --device cuda > logs/precision.log 2>&1
tail -n 3 logs/*.log
