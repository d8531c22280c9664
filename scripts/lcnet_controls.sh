#!/usr/bin/env bash
# The static networks beside docs/results/lcnet.md, each scored on test-b (the LC-Net runs'
# report split) with its small files kept beside the page:
# - with their shipped weights: ResNet-20 (40.6 M MACs, 3.09x fewer than ResNet-56, about
#   the 3x runs' cost) and the dense ResNet-56 itself;
# - the same-recipe controls: the static ResNet-20 trained the way the 3x LC-Net chain was
#   (lcnet_r315_kd05_e22 -> _c26 -> _g01 in scripts/lcnet_results.sh): from its shipped
#   weights, distilled from the dense ResNet-56 (0.5, T = 4), weight decay 1e-4, bfloat16
#   autocast; 22 epochs from lr 0.01, then 26 and 14 more from 0.002, each a fresh cosine
#   schedule. `dyve train` keeps each cycle's last epoch (the LC-Net runs keep their best
#   on test-a). 60-90 s per epoch alone on 2 cores (about 80 minutes in all). Then the
#   dense ResNet-56 the same way, distilled from itself: the control of the backbone
#   itself (120-155 s per epoch alone, 2-2.5 hours).
# Rerun to resume.
set -euo pipefail
RUNS=${RUNS:-runs/lcnet}
CONTROL="${RUNS%/}-control"
STATIC="${RUNS%/}-static"
PAGE=docs/results/lcnet/static
source "$(dirname "${BASH_SOURCE[0]}")/once.sh"

static() {  # static MODEL NAME EVAL_ARGS...: score on test-b (unless scored), keep its files
  local model=$1 name=$2; shift 2
  [[ -f "$STATIC/$name/metrics.json" && -f "$STATIC/$name/correct.npy" ]] ||
    dyve eval --model "$model" --data cifar10-jpeg --split test-b --out "$STATIC/$name" \
      --no-progress "$@"
  mkdir -p "$PAGE/$name"
  cp "$STATIC/$name"/{config,metrics}.json "$STATIC/$name/correct.npy" "$PAGE/$name/"
}

control() {  # control MODEL NAME INIT ARGS...: train (or resume, or keep), score on test-b
  local model=$1 name=$2 init=$3; shift 3
  local out="$CONTROL/$name"
  local origin="dyve's shipped $model (akamaster/pytorch_resnet_cifar10, BSD-2-Clause), \
fine-tuned on cifar10-jpeg with distillation from resnet56_cifar"
  once "$out" dyve train --out "$out" --model "$model" --init "$init" --origin "$origin" \
    --weight-decay 1e-4 --distill 0.5 --teacher resnet56_cifar --bf16 --threads 2 \
    --no-progress "$@"
  static "$model" "$name" --weights "$out/model.safetensors"
  cp "$out/model.json" "$STATIC/$name/"  # a control wherever its eval is read from
  cp "$out/model.json" "$PAGE/$name/"
}

static resnet20_cifar resnet20_cifar
static resnet56_cifar resnet56_cifar

control resnet20_cifar resnet20_kd05_e22 shipped --epochs 22 --lr 0.01
control resnet20_cifar resnet20_kd05_e22_c26 "$CONTROL/resnet20_kd05_e22/model.safetensors" \
  --epochs 26 --lr 0.002
control resnet20_cifar resnet20_kd05_e22_c26_g01 \
  "$CONTROL/resnet20_kd05_e22_c26/model.safetensors" --epochs 14 --lr 0.002
# The dense backbone trained the same way (distilled from itself), cycle by cycle: how much
# of an LC-Net run's loss is extra training that the shipped ResNet-56 would also take.
control resnet56_cifar resnet56_kd05_e22 shipped --epochs 22 --lr 0.01
control resnet56_cifar resnet56_kd05_e22_c26 "$CONTROL/resnet56_kd05_e22/model.safetensors" \
  --epochs 26 --lr 0.002
control resnet56_cifar resnet56_kd05_e22_c26_g01 \
  "$CONTROL/resnet56_kd05_e22_c26/model.safetensors" --epochs 14 --lr 0.002
