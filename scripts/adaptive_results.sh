#!/usr/bin/env bash
# Regenerate docs/results/adaptive.md: early exit on ResNet-56 (linear heads, and conv
# heads), network selection over three and four zoo networks, then `dyve bench` of each.
# Runs resume from their caches; about 25 min on 2 cores (the conv heads' cache of maps
# takes 4.4 GB of disk).
set -euo pipefail
RUNS=${1:-runs/adaptive}
dyve exits fit --model resnet56_cifar --out "$RUNS/exits_resnet56" --no-progress
dyve exits fit --model resnet56_cifar --convs -1 --out "$RUNS/exits_resnet56_conv" --no-progress
dyve select fit --models caffe_cifar10,resnet20_cifar,resnet56_cifar \
  --out "$RUNS/select_caffe_r20_r56" --no-progress
dyve select fit --models caffe_cifar10,vgg16_bn_cifar_w025,resnet20_cifar,resnet56_cifar \
  --out "$RUNS/select_caffe_vgg_r20_r56" --no-progress
runs=("$RUNS/exits_resnet56" "$RUNS/exits_resnet56_conv" "$RUNS/select_caffe_r20_r56"
  "$RUNS/select_caffe_vgg_r20_r56")
for r in "${runs[@]}"; do
  dyve bench "$r" --data cifar10-jpeg --split test-b --repeats 300 --frozen
done
dyve adaptive results "${runs[@]}" --out docs/results/adaptive.md
