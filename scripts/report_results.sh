#!/usr/bin/env bash
# docs/results/report/: one report across the methods' result runs on the held-out test-b
# split (5,000 images). Needs the runs of scripts/{adaptive,lcnet,d2nn}_results.sh (or the
# commands in scripts/ship_runs.py) and the DyVEDeep calibration in docs/results/dyvedeep.
# About 3 minutes on 2 cores; run it on an idle machine (it times every model).
set -euo pipefail
OUT=${OUT:-docs/results/report}
dyve report \
  docs/results/dyvedeep/resnet56_cifar \
  runs/adaptive/exits_resnet56 \
  runs/adaptive/select_caffe_r20_r56 \
  runs/lcnet/lcnet_l01_c0005 \
  runs/d2nn/hierarchical/all_lam0.1 \
  --labels "DyVEDeep,early exit,network selection,LC-Net,D2NN" \
  --data cifar10-jpeg --split test-b --repeats 150 --latency-images 50 --no-progress \
  --title "dyve: every method on CIFAR-10 test-b" --out "$OUT"
