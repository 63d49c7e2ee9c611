#!/usr/bin/env bash
# Review time of a ~500-line change across 10 files, three ways: requests one at a time with no
# prompt sharing (`isolated`: review.parallel = 1, engine.prefix_cache = false), one at a time
# reusing the common prompt prefix from the KV cache (`sequential`), and all sent together
# (`batched`: review.parallel = 0, the engine batches them and shares the prefix). Prints each
# wall time and the ratios.
#
#   benches/review/run.sh [TROUPE_BINARY] [MODEL]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
troupe=${1:-target/release/troupe}
model=${2:-qwen2.5-coder-0.5b-instruct}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 "$here/make_change.py" "$work/repo"
printf '[review]\nparallel = 1\n[engine]\nprefix_cache = false\n' >"$work/isolated.toml"
printf '[review]\nparallel = 1\n' >"$work/sequential.toml"
printf '[review]\nparallel = 0\n' >"$work/batched.toml"
declare -A wall
for mode in isolated sequential batched; do
    start=$(python3 -c 'import time; print(time.time())')
    (cd "$work/repo" && "$troupe" --model "$model" --config "$work/$mode.toml" \
        review --format json --output "$work/$mode.json" 2>"$work/$mode.err") ||
        { cat "$work/$mode.err" >&2; exit 2; }
    wall[$mode]=$(python3 -c "import time; print(round(time.time() - $start, 1))")
    summary=$(python3 -c "import json,sys; r=json.load(open(sys.argv[1])); c=r['coverage']; print(f\"{len(r['findings'])} findings, {c['hunks_reviewed']}/{c['hunks']} hunks, {c['changed_lines_reviewed']} lines, {r['answers_cut']} answers cut\")" "$work/$mode.json")
    grep -m1 "model requests" "$work/$mode.err" || true
    printf '%-10s %8.1f s   %s\n' "$mode" "${wall[$mode]}" "$summary"
done
python3 -c "print(f'batched: {${wall[isolated]} / ${wall[batched]}:.2f}x faster than isolated, {${wall[sequential]} / ${wall[batched]}:.2f}x faster than sequential')"
