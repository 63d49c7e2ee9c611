#!/usr/bin/env bash
# Runs troupe's whole test suite, first installing what is missing: system packages, the Python
# test environment, the build, and the small models the tests use. Arguments go to `cargo test`.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

ensure_rust
ensure_system_packages
ensure_venv
export TROUPE_VENV=$TROUPE_CACHE/venv
ensure_sarif_schema
export TROUPE_SARIF_SCHEMA=$TROUPE_CACHE/testdata/sarif-2.1.0-rtm.5.json

troupe=$(build_troupe dev)
say "fetching the test models (already verified ones are skipped)"
"$troupe" models pull smollm2-135m-instruct all-minilm-l6-v2 qwen2.5-coder-0.5b-instruct >/dev/null

say "running the test suite"
cd "$TROUPE_SRC"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
cargo test --locked --no-fail-fast "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
# One closing line over every test binary.
awk '/^test result:/ { passed += $4; failed += $6 } END { printf "tests: %d passed, %d failed\n", passed, failed }' "$log"
exit "$status"
