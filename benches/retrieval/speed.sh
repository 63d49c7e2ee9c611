#!/usr/bin/env bash
# Index speed and size at several repository sizes, re-index after one edit, and search latency
# per CLI call. Usage: benches/retrieval/speed.sh TROUPE_BIN REPO... (git work trees; their
# .troupe/ is deleted first). Prints one line per measurement.
set -euo pipefail
bin=$1; shift
for repo in "$@"; do
    lines=$(cd "$repo" && git ls-files -z | { xargs -0 cat 2>/dev/null || true; } | wc -l)
    rm -rf "$repo/.troupe"
    start=$(date +%s.%N)
    out=$("$bin" --repo "$repo" index --no-vectors --json)
    end=$(date +%s.%N)
    size=$(du -sk "$repo/.troupe/index" | cut -f1)
    echo "$repo lines=$lines cold_wall_s=$(echo "$end - $start" | bc) index_kb=$size $(echo "$out" | python3 -c 'import json,sys; d=json.load(sys.stdin); print("files=%d chunks=%d update_s=%.2f" % (d["files"], d["chunks"], d["seconds"]))')"
    # Nothing changed.
    start=$(date +%s.%N); "$bin" --repo "$repo" index --no-vectors --json >/dev/null; end=$(date +%s.%N)
    echo "$repo noop_wall_s=$(echo "$end - $start" | bc)"
    # One file changed (appended a function), then restored.
    f=$(git -C "$repo" ls-files | grep -E '\.(rs|py|go)$' | head -1 || true)
    cp "$repo/$f" /tmp/speed_backup
    printf '\nfn bench_edit_marker() {}\n' >> "$repo/$f"
    start=$(date +%s.%N); "$bin" --repo "$repo" index --no-vectors --json >/dev/null; end=$(date +%s.%N)
    echo "$repo one_file_wall_s=$(echo "$end - $start" | bc) ($f)"
    cp /tmp/speed_backup "$repo/$f"
    "$bin" --repo "$repo" index --no-vectors --json >/dev/null
    # Search latency per CLI call (process start, index open, query), BM25.
    ts=()
    for q in "parse command line arguments" "error handling" "render output" "config file" "unicode width" \
             "syntax highlighting theme" "http request context" "test helper" "read from stdin" "format string"; do
        s=$(date +%s%N); "$bin" --repo "$repo" search --mode bm25 --json "$q" >/dev/null || true; e=$(date +%s%N)
        ts+=($(( (e - s) / 1000000 )))
    done
    echo "$repo cli_search_bm25_ms=$(printf '%s\n' "${ts[@]}" | sort -n | tr '\n' ' ')"
done
