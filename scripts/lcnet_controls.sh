#!/usr/bin/env bash
# The same-recipe control of docs/results/lcnet.md: the static ResNet-20 (40.6 M MACs, 3.09x
# fewer than ResNet-56, about the 3x runs' cost) trained the way the 3x LC-Net chain was
# (lcnet_r315_kd05_e22 -> _c26 -> _g01 in scripts/lcnet_results.sh): from its shipped
# weights, distilled from the dense ResNet-56 (0.5, T = 4), weight decay 1e-4, bfloat16
# autocast; 22 epochs from lr 0.01, then 26 and 14 more from 0.002, each a fresh cosine
# schedule. `dyve train` keeps each cycle's last epoch (the LC-Net runs keep their best on
# test-a). Each cycle is then scored on test-b, the LC-Net runs' report split. 60-90 s per
# epoch alone on 2 cores (about 80 minutes in all); rerun to resume.
set -euo pipefail
RUNS=${RUNS:-runs/lcnet}
CONTROL="${RUNS%/}-control"
STATIC="${RUNS%/}-static"
ORIGIN="dyve's shipped resnet20_cifar (akamaster/pytorch_resnet_cifar10, BSD-2-Clause), \
fine-tuned on cifar10-jpeg with distillation from resnet56_cifar"

control() {  # control NAME INIT ARGS...: train (or resume, or keep), then score on test-b
  local name=$1 init=$2; shift 2
  local out="$CONTROL/$name"
  if [[ ! -f "$out/metrics.json" ]]; then
    local resume=()
    [[ -f "$out/config.json" ]] && resume=(--resume)
    dyve train --out "$out" --model resnet20_cifar --init "$init" --origin "$ORIGIN" \
      --weight-decay 1e-4 --distill 0.5 --teacher resnet56_cifar --bf16 --threads 2 \
      --no-progress "$@" "${resume[@]}"
  fi
  [[ -f "$STATIC/$name/metrics.json" ]] ||
    dyve eval --model resnet20_cifar --weights "$out/model.safetensors" --data cifar10-jpeg \
      --split test-b --out "$STATIC/$name" --no-progress
  mkdir -p "docs/results/lcnet/static/$name"
  cp "$STATIC/$name"/{config,metrics}.json "$out/model.json" "docs/results/lcnet/static/$name/"
}

control resnet20_kd05_e22 shipped --epochs 22 --lr 0.01
control resnet20_kd05_e22_c26 "$CONTROL/resnet20_kd05_e22/model.safetensors" \
  --epochs 26 --lr 0.002
control resnet20_kd05_e22_c26_g01 "$CONTROL/resnet20_kd05_e22_c26/model.safetensors" \
  --epochs 14 --lr 0.002
