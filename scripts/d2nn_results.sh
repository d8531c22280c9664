#!/usr/bin/env bash
# D2NN on CIFAR-10: the four architectures, each pre-trained with random routing, then
# (from that checkpoint, for the same number of epochs) trained with Q-learned controllers
# at three lambdas and, as the static baseline, with random routing again; the same with
# pre-training that runs every branch (high-low, cascade, hierarchical); plus the full
# static network and some cheaper static paths trained alone for the whole budget.
# The two-level hierarchy (hierarchical2) is trained with every branch executed only.
# Then, from the static graph's weights (`all`, or `random` for the chain, whose
# controllers gate every stage), controllers alone Q-learned with the modules frozen
# (`frozen_lam*`: the same modules, so only the decisions differ from the static graph),
# for longer and at the full learning rate (only the small controllers train, each epoch
# is cheap, and 3 epochs at the joint runs' controller rate left them undertrained).
# Then docs/results/d2nn.md.
# Two queues of runs side by side, one thread each; every run resumes where it stopped
# (rerun after a crash) and a finished run (metrics.json present) is kept.
# About 170 minutes on 2 cores from nothing (the frozen runs and the benchmarks: 55).
# Benchmarks run after all training, alone.
set -euo pipefail
RUNS=${RUNS:-runs/d2nn}
PRE=${PRE:-4}      # pre-training epochs (random routing or every branch)
JOINT=${JOINT:-3}  # epochs after pre-training (learned or random routing)
LAMS=${LAMS:-"0.05 0.2 0.5"}
LAMS_ALL=${LAMS_ALL:-"0.01 0.02 0.05 0.1"}
LAMS_FROZEN=${LAMS_FROZEN:-"0.01 0.02 0.05 0.1 0.2 0.5"}
FROZEN=${FROZEN:-12}  # epochs of the frozen runs (controllers only)
FROZEN_QLR=${FROZEN_QLR:-1}  # their learning rate, as a factor of --lr

source "$(dirname "${BASH_SOURCE[0]}")/once.sh"

train() {  # train ARCH NAME ARGS...
  local arch="$1" out="$RUNS/$1/$2"; shift 2
  once "$out" dyve d2nn train --arch "$arch" --out "$out" --threads 1 --no-progress "$@"
}

queue() {  # queue ARCH...: every run of each architecture, in order
  for arch in "$@"; do
    train "$arch" pre --route random --epochs "$PRE"
    train "$arch" random --route random --epochs "$JOINT" --init "$RUNS/$arch/pre"
    for lam in $LAMS; do
      train "$arch" "lam$lam" --route learned --lam "$lam" --epochs "$JOINT" --init "$RUNS/$arch/pre"
    done
    train "$arch" full --route static --epochs $((PRE + JOINT))
  done
}

every() {  # every ARCH...: pre-training with all branches executed, then the same runs
  for arch in "$@"; do
    train "$arch" all_pre --route all --epochs "$PRE"
    train "$arch" all --route all --epochs "$JOINT" --init "$RUNS/$arch/all_pre"
    for lam in $LAMS_ALL; do
      train "$arch" "all_lam$lam" --route learned --lam "$lam" --epochs "$JOINT" \
        --init "$RUNS/$arch/all_pre"
    done
  done
}

alone() {  # cheaper static paths, each trained alone for the whole budget
  train highlow alone_low --route static --static q=low --epochs $((PRE + JOINT))
  train cascade alone_stage1 --route static --static q1=stop --epochs $((PRE + JOINT))
  train cascade alone_stage2 --route static --static q1=go,q2=stop --epochs $((PRE + JOINT))
  train chain alone_quarter --route static --static q1=quarter,q2=quarter,q3=quarter \
    --epochs $((PRE + JOINT))
  train chain alone_half --route static --static q1=half,q2=half,q3=half --epochs $((PRE + JOINT))
}

frozen() {  # frozen ARCH INIT: controllers Q-learned on INIT's frozen modules (its static graph)
  local arch="$1" init="$2"
  for lam in $LAMS_FROZEN; do
    train "$arch" "frozen_lam$lam" --route learned --lam "$lam" --epochs "$FROZEN" \
      --q-lr-scale "$FROZEN_QLR" --init "$RUNS/$arch/$init" --freeze
  done
}

two_levels() {  # hierarchical2: every-branch pre-training, its static graph, the full one alone
  train hierarchical2 all_pre --route all --epochs "$PRE"
  train hierarchical2 all --route all --epochs "$JOINT" --init "$RUNS/hierarchical2/all_pre"
  train hierarchical2 full --route static --epochs $((PRE + JOINT))
}

# each queue a `{ ...; }` group, not an `&&` chain: bash ignores `set -e` inside a function
# called from a chain, so a failed run would not stop its queue
{ queue highlow cascade; alone; every highlow cascade; } > "$RUNS.queue1.log" 2>&1 &
pids=("$!")
{ queue chain hierarchical; every hierarchical; two_levels; } > "$RUNS.queue2.log" 2>&1 &
pids+=("$!")
wait_all "${pids[@]}"
{ frozen highlow all; frozen cascade all; frozen hierarchical2 all; } >> "$RUNS.queue1.log" 2>&1 &
pids=("$!")
{ frozen chain random; frozen hierarchical all; } >> "$RUNS.queue2.log" 2>&1 &
pids+=("$!")
wait_all "${pids[@]}"
for r in "$RUNS"/*/lam0.05/ "$RUNS"/*/all_lam0.05/ "$RUNS"/*/frozen_lam0.05/ \
  "$RUNS"/*/frozen_lam0.2/ "$RUNS"/*/full/; do
  [[ -f "$r/bench.json" ]] || dyve bench "$r" --data cifar10-jpeg --split test --repeats 40 \
    || echo "bench failed: $r"
done
for r in "$RUNS"/*/*/; do  # the runs' small files beside the page (weights stay in RUNS)
  keep="docs/results/d2nn/runs/$(basename "$(dirname "$r")")/$(basename "$r")"
  mkdir -p "$keep"
  cp "$r"/{config,metrics}.json "$r"/history.jsonl "$keep"/
  [[ -f "$r/bench.json" ]] && cp "$r/bench.json" "$keep"/
done
dyve d2nn results "$RUNS"/*/*/ --out docs/results/d2nn.md
