# Shared by scripts/run.sh and scripts/test.sh: find or install what troupe needs to build and
# run, saying what it does. Sourced, not run.
set -euo pipefail

TROUPE_SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TROUPE_CACHE=${TROUPE_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/troupe}
# One build directory outside the checkout, so every clone (and CI) reuses the same warm build.
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$TROUPE_CACHE/target}

say() { printf '\033[1m==>\033[0m %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 2; }

# Rust itself is the one prerequisite.
ensure_rust() {
    if ! command -v cargo >/dev/null 2>&1; then
        [ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
    fi
    command -v cargo >/dev/null 2>&1 ||
        die "cargo not found: install a Rust toolchain (https://rustup.rs), then run this again"
}

have_libclang() {
    [ -n "${LIBCLANG_PATH:-}" ] && return 0
    local f
    # libclang itself (what bindgen loads), not libclang-cpp, which LLVM packages bring alone.
    for f in /usr/lib/llvm-*/lib/libclang.so* /usr/lib/llvm-*/lib/libclang-[0-9]*.so* \
        /usr/lib/*-linux-gnu/libclang.so* /usr/lib/*-linux-gnu/libclang-[0-9]*.so* \
        /usr/lib64/libclang.so* /usr/lib64/libclang-[0-9]*.so*; do
        [ -e "$f" ] && return 0
    done
    return 1
}

have_protobuf_includes() {
    local d
    for d in ${PROTOC_INCLUDE:-} /usr/include /usr/local/include /opt/homebrew/include; do
        [ -n "$d" ] && [ -f "$d/google/protobuf/empty.proto" ] && return 0
    done
    return 1
}

# System packages the build and the model download need. Checked by what they provide, so a
# machine that has them some other way is left alone.
ensure_system_packages() {
    local missing=()
    command -v cmake >/dev/null 2>&1 || missing+=(cmake)
    command -v c++ >/dev/null 2>&1 || missing+=(g++)
    command -v make >/dev/null 2>&1 || missing+=(make)
    command -v pkg-config >/dev/null 2>&1 || missing+=(pkg-config)
    command -v protoc >/dev/null 2>&1 || missing+=(protobuf-compiler)
    # lance's build compiles .proto files that import protobuf's well-known types.
    have_protobuf_includes || missing+=(libprotobuf-dev)
    command -v git >/dev/null 2>&1 || missing+=(git)
    command -v curl >/dev/null 2>&1 || missing+=(curl ca-certificates)
    command -v tmux >/dev/null 2>&1 || missing+=(tmux)  # the terminal UI's end-to-end test
    have_libclang || missing+=(libclang-dev clang)
    command -v python3 >/dev/null 2>&1 || missing+=(python3)
    python3 -m pip --version >/dev/null 2>&1 || missing+=(python3-pip)
    python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || missing+=(python3-venv)
    [ ${#missing[@]} -eq 0 ] && return 0
    if ! command -v apt-get >/dev/null 2>&1; then
        die "missing: ${missing[*]}. Install them with your package manager (macOS: brew install cmake llvm protobuf pkg-config python), then run this again"
    fi
    local sudo=()
    if [ "$(id -u)" -ne 0 ]; then
        command -v sudo >/dev/null 2>&1 || die "installing ${missing[*]} needs root: run as root or install sudo"
        sudo=(sudo)
    fi
    say "installing system packages: ${missing[*]}"
    "${sudo[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# A Python environment for the test suite's independent reference computations and peers.
ensure_venv() {
    local venv=$TROUPE_CACHE/venv req=$TROUPE_SRC/scripts/requirements-dev.txt
    local stamp=$venv/.requirements.sha256 want
    want=$(sha256sum "$req" | cut -d' ' -f1)
    if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x "$venv/bin/python" ]; then
        return 0
    fi
    say "setting up the Python test environment in $venv (numpy, safetensors, tokenizers, ...)"
    python3 -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$req"
    echo "$want" >"$stamp"
}

# The official SARIF 2.1.0 JSON schema, for the test that validates `troupe review --format sarif`.
# It ships in the MIT-licensed npm package @microsoft/jest-sarif; the tarball is checked by sha256.
ensure_sarif_schema() {
    local dir=$TROUPE_CACHE/testdata
    local schema=$dir/sarif-2.1.0-rtm.5.json
    local url=https://registry.npmjs.org/@microsoft/jest-sarif/-/jest-sarif-1.0.0-beta.0.tgz
    local sha=748e2c3d1a842e7bb258416685c7ea3a0da40005b72267b2052c2856d48ad102
    [ -f "$schema" ] && return 0
    say "fetching the SARIF 2.1.0 schema for the review tests"
    mkdir -p "$dir"
    local tgz
    tgz=$(mktemp)
    curl --fail --silent --show-error --location --retry 3 -o "$tgz" "$url"
    if [ "$(sha256sum "$tgz" | cut -d' ' -f1)" != "$sha" ]; then
        rm -f "$tgz"
        echo "error: $url does not have the expected sha256 $sha" >&2
        return 1
    fi
    tar -xzf "$tgz" -O package/lib/schemas/sarif-2.1.0-rtm.5.json >"$schema.part"
    mv "$schema.part" "$schema"
    rm -f "$tgz"
}

# Builds the troupe binary in the given cargo profile (dev or release) and prints its path.
build_troupe() {
    local profile=$1 dir=debug
    [ "$profile" = release ] && dir=release
    if [ ! -x "$CARGO_TARGET_DIR/$dir/troupe" ]; then
        say "building troupe ($profile profile) in $CARGO_TARGET_DIR; the first build compiles about 700 crates and llama.cpp"
    fi
    # A failed build stops here: callers run this in $(...), where `set -e` does not reach.
    (cd "$TROUPE_SRC" && cargo build --locked --profile "$profile" --bin troupe) >&2 ||
        die "the $profile build of troupe failed (the compiler's messages are above)"
    echo "$CARGO_TARGET_DIR/$dir/troupe"
}
