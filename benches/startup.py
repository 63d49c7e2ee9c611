#!/usr/bin/env python3
"""Start-up of a one-shot command: in-process against through a running `troupe lsp`.

The same `troupe --json explain --file src/money.py --range 1:3` runs in two identical
repositories: in one, nothing else runs, so every call loads the model and opens the index
itself; in the other, a `troupe lsp` listens on `.troupe/editor.sock`, so every call sends its
request there. Runs alternate between the two paths so both see the same machine load. The
server's first request (which loads its model) is a warm-up, reported apart. Answers are capped
at a few tokens (`agents.max_tokens`), so the figures are dominated by start-up.

Usage: python3 benches/startup.py --troupe target/debug/troupe --model PATH [--runs 7]
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

MONEY = '''def add_cents(a, b):
    """Adds two amounts given in cents."""
    return a + b


def format_cents(c):
    return f"{c // 100}.{c % 100:02d}"


def parse_cents(text):
    units, cents = text.split(".")
    return int(units) * 100 + int(cents)
'''


def git(repo, *args):
    subprocess.run(["git", "-C", repo, *args], check=True, capture_output=True)


def make_repo(path, max_tokens):
    os.makedirs(os.path.join(path, "src"))  # and its parents
    with open(os.path.join(path, "src", "money.py"), "w") as f:
        f.write(MONEY)
    with open(os.path.join(path, "troupe.toml"), "w") as f:
        f.write(f"[agents]\nmax_tokens = {max_tokens}\n")
    with open(os.path.join(path, ".gitignore"), "w") as f:
        f.write(".troupe/\n")
    git(path, "init", "-q")
    git(path, "add", ".")
    git(path, "-c", "user.name=bench", "-c", "user.email=bench@example.com",
        "commit", "-q", "-m", "fixture")


def explain(troupe, model, repo, env):
    cmd = [troupe, "--repo", repo, "--model", model, "--json", "explain",
           "--file", "src/money.py", "--range", "1:3"]
    start = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    took = time.perf_counter() - start
    if out.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({out.returncode}): {out.stderr.strip()}")
    stats = json.loads(out.stdout)["stats"]
    return took, stats


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--troupe", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--max-tokens", type=int, default=16)
    a = ap.parse_args()
    troupe = os.path.abspath(a.troupe)
    env = dict(os.environ, RUST_LOG="off")
    work = tempfile.mkdtemp(prefix="troupe-startup-")
    # Same directory name, so the prompts are the same.
    local = os.path.join(work, "local", "shop")
    served = os.path.join(work, "served", "shop")
    lsp = None
    try:
        for repo in (local, served):
            make_repo(repo, a.max_tokens)
            subprocess.run([troupe, "--repo", repo, "--quiet", "index"], check=True, env=env,
                           capture_output=True, timeout=900)
        lsp = subprocess.Popen([troupe, "--repo", served, "--model", a.model, "lsp"],
                               stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, env=env)
        sock = os.path.join(served, ".troupe", "editor.sock")
        deadline = time.time() + 30
        while not os.path.exists(sock):
            if time.time() > deadline or lsp.poll() is not None:
                sys.exit("troupe lsp did not listen on " + sock)
            time.sleep(0.05)
        warm, _ = explain(troupe, a.model, served, env)
        print(f"server warm-up (its model load + first answer): {warm:.2f} s")
        times = {"in-process": [], "socket": []}
        for i in range(a.runs):
            for path, repo in (("in-process", local), ("socket", served)):
                took, stats = explain(troupe, a.model, repo, env)
                times[path].append(took)
                print(f"run {i + 1} {path:10} {took:6.2f} s  prompt {stats['prompt_tokens']}"
                      f" (cached {stats['cached_tokens']}), generated"
                      f" {stats['generated_tokens']}")
        med = {k: statistics.median(v) for k, v in times.items()}
        for k, v in times.items():
            print(f"{k:10} median {med[k]:.2f} s  min {min(v):.2f}  max {max(v):.2f}"
                  f"  (n={len(v)})")
        print(f"in-process / socket: {med['in-process'] / med['socket']:.1f}x")
    finally:
        if lsp is not None:
            lsp.kill()
            lsp.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
