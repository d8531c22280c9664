#!/usr/bin/env bash
# docs/results/report/: one report across the methods' result runs on the held-out test-b
# split (5,000 images). Needs the runs of scripts/adaptive_results.sh, the DyVEDeep
# calibration in docs/results/dyvedeep, the LC-Net run kept beside its page, and the D2NN
# run of scripts/d2nn_results.sh, or else its copy shipped in the package
# (scripts/ship_runs.py copies exactly that run).
# About 3 minutes on 2 cores; run it on an idle machine (it times every model).
set -euo pipefail
OUT=${OUT:-docs/results/report}
pick() { if [[ -d "$1" ]]; then echo "$1"; else echo "$2"; fi; }
# LC-Net: the run of about 3x its page chooses on the selection split (weights kept in git;
# the demo ships it too)
LC=docs/results/lcnet/runs/lcnet_r315_kd05_e100
D2=$(pick runs/d2nn/hierarchical/all_lam0.1 src/dyve/_assets/runs/d2nn_hierarchical)
dyve report \
  docs/results/dyvedeep/resnet56_cifar \
  runs/adaptive/exits_resnet56 \
  runs/adaptive/select_caffe_r20_r56 \
  "$LC" \
  "$D2" \
  --labels "DyVEDeep,early exit,network selection,LC-Net,D2NN" \
  --data cifar10-jpeg --split test-b --repeats 150 --latency-images 50 --no-progress \
  --title "dyve: every method on CIFAR-10 test-b" --out "$OUT"
