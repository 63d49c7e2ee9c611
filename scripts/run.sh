#!/usr/bin/env bash
# Runs troupe on the current repository with the default models, first installing what is
# missing: system packages, the release build, and the default chat and embedding models.
# Arguments go to troupe; without any it runs the main job.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

ensure_rust
ensure_system_packages
troupe=$(build_troupe release)
say "fetching the default models (already verified ones are skipped)"
"$troupe" models pull >/dev/null

if [ $# -eq 0 ]; then
    # The main job: index the repository, then open the terminal UI on it; without a terminal
    # (a pipe, CI), answer a question about the repository from its code instead.
    say "indexing $(pwd) (only what changed since the last run)"
    "$troupe" index
    if [ ! -t 0 ] || [ ! -t 1 ]; then
        set -- ask "What does this repository do, and how is its code organised? Name the main files."
    fi
fi
exec "$troupe" "$@"
