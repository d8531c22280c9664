#!/usr/bin/env bash
# Regenerate docs/results/adaptive.md: early exit on ResNet-56, network selection over
# three and four zoo networks, then `dyve bench` of each. Runs resume from their caches;
# about 12 min on 2 cores.
set -euo pipefail
RUNS=${1:-runs/adaptive}
dyve exits fit --model resnet56_cifar --out "$RUNS/exits_resnet56" --no-progress
dyve select fit --models caffe_cifar10,resnet20_cifar,resnet56_cifar \
  --out "$RUNS/select_caffe_r20_r56" --no-progress
dyve select fit --models caffe_cifar10,vgg16_bn_cifar_w025,resnet20_cifar,resnet56_cifar \
  --out "$RUNS/select_caffe_vgg_r20_r56" --no-progress
for r in "$RUNS/exits_resnet56" "$RUNS/select_caffe_r20_r56" "$RUNS/select_caffe_vgg_r20_r56"; do
  dyve bench "$r" --data cifar10-jpeg --split test-b --repeats 300 --frozen
done
dyve adaptive results "$RUNS/exits_resnet56" "$RUNS/select_caffe_r20_r56" \
  "$RUNS/select_caffe_vgg_r20_r56" --out docs/results/adaptive.md
