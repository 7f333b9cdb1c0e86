#!/usr/bin/env bash
# The GPU check: the same lowshot commands on the glyph set on each device, timed, with throughput ratios
# against the first device (the CPU). On a CUDA machine it runs training (fp32; bf16 autocast with
# channels_last, torch.compile off and on), features, the benchmark grid for three heads, 600 episodes
# for every episode head and the analogy generator; under 8 minutes on one H100.
#
#   bash benchmarks/gpu_check.sh                      # DEVICES="cpu cuda", the demo's glyph set
#   DEVICES=cpu QUICK=1 bash benchmarks/gpu_check.sh  # what the tests run: a tiny set, the same code paths
#
# Every run writes into $OUT_DIR (default: a temporary folder) and prints one table on stdout:
# step, device, seconds, and the ratio of the first device's seconds to this one's.
set -euo pipefail
cd "$(dirname "$0")/.."
LOWSHOT=$(realpath "${LOWSHOT:-.venv/bin/lowshot}")
DEVICES=${DEVICES:-cpu cuda}
OUT_DIR=${OUT_DIR:-$(mktemp -d)}
export LOWSHOT_CACHE=${LOWSHOT_CACHE:-$OUT_DIR/cache}

if [ "${QUICK:-0}" = 1 ]; then   # a tiny glyph set: the code paths of every step in a few seconds each
    DATA='{"num_classes": 12, "images_per_class": 26, "test_per_class": 4}'
    TRAIN=(--set 'dataset_args='"$DATA" --set width=0.125 --set stem=small --set classifier=cosine
           --set batch_size=32 --epochs 1)
    EPISODES=(--set episodes=20 --set queries=3 --set 'ways=[3]' --set 'shots=[1]')
    GRID=(--n 1 --expid 1); GEN=(--set iterations=20)
else                             # the demo's set and recipe, one epoch per training variant
    DATA='{}'
    TRAIN=(--config "$PWD/configs/demo_train.json" --epochs 1)
    EPISODES=(--set episodes=600 --set 'ways=[5]' --set 'shots=[1,5]')
    GRID=(); GEN=()
fi
EPISODE_HEADS='["protonet","cosine_ncm","bd_cspn","laplacian_shot","tim","pt_map","transductive_ft","repmet","magnet"]'

( cd "$OUT_DIR" && "$LOWSHOT" --no-progress data --dataset glyphs --dataset-args "$DATA" >/dev/null ) \
    || { echo "lowshot data failed" >&2; exit 1; }
RESULTS=$OUT_DIR/timings.tsv
: > "$RESULTS"

step() {  # step NAME DEVICE COMMAND...: run in $OUT_DIR, append "name device seconds"
    local name=$1 device=$2; shift 2
    local start end
    start=$(date +%s.%N)
    ( cd "$OUT_DIR" && "$@" >"$OUT_DIR/$name-$device.log" 2>&1 ) \
        || { echo "$name on $device failed; its log: $OUT_DIR/$name-$device.log" >&2; tail -5 "$OUT_DIR/$name-$device.log" >&2; exit 1; }
    end=$(date +%s.%N)
    awk -v n="$name" -v d="$device" -v a="$start" -v b="$end" 'BEGIN {printf "%s\t%s\t%.3f\n", n, d, b - a}' >> "$RESULTS"
}

for device in $DEVICES; do
    L=("$LOWSHOT" --no-progress)
    run=runs/$device
    variants=("fp32:--amp off")
    [ "$device" != cpu ] && variants+=("bf16-channels-last:--amp bf16 --set channels_last=true"
                                       "bf16-channels-last-compile:--amp bf16 --set channels_last=true --set compile=true")
    for variant in "${variants[@]}"; do
        name=${variant%%:*}; options=${variant#*:}
        # shellcheck disable=SC2086
        step "train-$name" "$device" "${L[@]}" train --run "$run-$name" --device "$device" "${TRAIN[@]}" $options
    done
    step features "$device" "${L[@]}" features --run "$run-fp32" --device "$device"
    step generate "$device" "${L[@]}" generate --run "$run-fp32" --device "$device" "${GEN[@]}"
    step grid-logreg,protonet,imprint "$device" "${L[@]}" benchmark --run "$run-fp32" --device "$device" \
        --heads logreg,protonet,imprint "${GRID[@]}"
    step episodes-every-head "$device" "${L[@]}" episodes --run "$run-fp32" --device "$device" \
        --set "heads=$EPISODE_HEADS" "${EPISODES[@]}"
done

# the table: ratio = seconds on the first device / seconds on this one (same step; for training, the
# first device's fp32 run), so > 1 is faster
first=${DEVICES%% *}
echo -e "step\tdevice\tseconds\tratio vs $first"
while IFS=$'\t' read -r name device seconds; do
    base=$(awk -F'\t' -v s="$name" -v d="$first" '$1 == s && $2 == d {print $3}' "$RESULTS")
    [ -z "$base" ] && base=$(awk -F'\t' -v d="$first" '$1 == "train-fp32" && $2 == d {print $3}' "$RESULTS")
    awk -v n="$name" -v d="$device" -v s="$seconds" -v b="$base" 'BEGIN {printf "%s\t%s\t%.1f\t%.2f\n", n, d, s, b / s}'
done < "$RESULTS"
