#!/usr/bin/env python3
"""Start-up of a one-shot command: in-process against through a running `troupe lsp`.

Two measurements, each alternating runs between the two paths so both see the same machine
load, reporting medians:

explain: the same `troupe --json explain --file src/money.py --range 1:3` runs in two identical
repositories: in one, nothing else runs, so every call loads the model and opens the index
itself; in the other, a `troupe lsp` listens on `.troupe/editor.sock`, so every call sends its
request there. The server's first request (which loads its model) is a warm-up, reported apart.
Answers are capped at a few tokens (`agents.max_tokens`), so the figures are dominated by
start-up.

search: `troupe --json search --mode hybrid QUERY` per CLI call on a clone of a repository
(--search-repo, default: the one this script is in), indexed with vectors, alternately with
`--no-instance` (every call loads the embedding model and opens tantivy and LanceDB) and through
a `troupe lsp` of the clone (model loaded and index open already). Queries cycle through a
fixed list; both paths must print the same results. The server's first search (its model
loads) is a warm-up, reported apart.

Usage: python3 benches/startup.py --troupe target/debug/troupe --model PATH [--runs 7]
           [--only explain|search] [--search-repo PATH] [--embed-model PATH|NAME]
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


QUERIES = [
    "open the index and search it",
    "parse the command line arguments",
    "load the model from a file",
    "error when the configuration is invalid",
    "write one JSON object per line",
    "cancel a running request",
]


def wait_for_socket(lsp, repo):
    sock = os.path.join(repo, ".troupe", "editor.sock")
    deadline = time.time() + 30
    while not os.path.exists(sock):
        if time.time() > deadline or lsp.poll() is not None:
            sys.exit("troupe lsp did not listen on " + sock)
        time.sleep(0.05)


def start_lsp(troupe, model, repo, env, extra=()):
    lsp = subprocess.Popen([troupe, "--repo", repo, "--model", model, *extra, "lsp"],
                           stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, env=env)
    wait_for_socket(lsp, repo)
    return lsp


def stop_lsp(lsp):
    lsp.kill()
    lsp.wait()


def report(times):
    med = {k: statistics.median(v) for k, v in times.items()}
    for k, v in times.items():
        print(f"{k:10} median {med[k] * 1000:8.1f} ms  min {min(v) * 1000:.1f}"
              f"  max {max(v) * 1000:.1f}  (n={len(v)})")
    return med


def bench_explain(troupe, model, runs, max_tokens, work, env):
    # Same directory name, so the prompts are the same.
    local = os.path.join(work, "local", "shop")
    served = os.path.join(work, "served", "shop")
    for repo in (local, served):
        make_repo(repo, max_tokens)
        subprocess.run([troupe, "--repo", repo, "--quiet", "index"], check=True, env=env,
                       capture_output=True, timeout=900)
    lsp = start_lsp(troupe, model, served, env)
    try:
        warm, _ = explain(troupe, model, served, env)
        print(f"explain: server warm-up (its model load + first answer): {warm:.2f} s")
        times = {"in-process": [], "socket": []}
        for i in range(runs):
            for path, repo in (("in-process", local), ("socket", served)):
                took, stats = explain(troupe, model, repo, env)
                times[path].append(took)
                print(f"run {i + 1} {path:10} {took:6.2f} s  prompt {stats['prompt_tokens']}"
                      f" (cached {stats['cached_tokens']}), generated"
                      f" {stats['generated_tokens']}")
        med = report(times)
        print(f"explain in-process / socket: {med['in-process'] / med['socket']:.1f}x")
    finally:
        stop_lsp(lsp)


def search(troupe, embed, repo, query, env, in_process):
    cmd = [troupe, "--repo", repo, "--embed-model", embed, "--json"]
    if in_process:
        cmd.append("--no-instance")
    cmd += ["search", "--mode", "hybrid", query]
    start = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    took = time.perf_counter() - start
    if out.returncode not in (0, 1):
        sys.exit(f"{' '.join(cmd)} failed ({out.returncode}): {out.stderr.strip()}")
    if "note: BM25 only" in out.stderr:
        sys.exit(f"{' '.join(cmd)} ran without vectors: {out.stderr.strip()}")
    return took, out.stdout


def bench_search(troupe, model, embed, runs, source, work, env):
    repo = os.path.join(work, "search", os.path.basename(os.path.abspath(source)))
    subprocess.run(["git", "clone", "-q", "--no-hardlinks", source, repo], check=True,
                   capture_output=True)
    lines = 0
    files = subprocess.run(["git", "-C", repo, "ls-files"], check=True, capture_output=True,
                           text=True).stdout.split()
    for f in files:
        try:
            with open(os.path.join(repo, f), "rb") as fh:
                lines += fh.read().count(b"\n")
        except OSError:
            pass
    print(f"search: indexing a clone of {source} ({len(files)} files, {lines} lines)...")
    start = time.perf_counter()
    subprocess.run([troupe, "--repo", repo, "--embed-model", embed, "--quiet", "index"],
                   check=True, env=env, capture_output=True, timeout=7200)
    print(f"search: indexed in {time.perf_counter() - start:.1f} s")
    lsp = start_lsp(troupe, model, repo, env, ("--embed-model", embed))
    try:
        warm, _ = search(troupe, embed, repo, QUERIES[0], env, in_process=False)
        print(f"search: server warm-up (its models load + first search): {warm:.2f} s")
        times = {"in-process": [], "socket": []}
        for i in range(runs):
            query = QUERIES[i % len(QUERIES)]
            outputs = {}
            for path in ("in-process", "socket"):
                took, outputs[path] = search(troupe, embed, repo, query, env,
                                             in_process=path == "in-process")
                times[path].append(took)
                print(f"run {i + 1} {path:10} {took * 1000:7.1f} ms  {query!r}")
            if outputs["in-process"] != outputs["socket"]:
                sys.exit(f"the two paths printed different results for {query!r}")
        med = report(times)
        print(f"search in-process / socket: {med['in-process'] / med['socket']:.1f}x")
    finally:
        stop_lsp(lsp)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--troupe", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--only", choices=["explain", "search"])
    ap.add_argument("--search-repo",
                    default=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    ap.add_argument("--embed-model", default="all-minilm-l6-v2")
    a = ap.parse_args()
    troupe = os.path.abspath(a.troupe)
    env = dict(os.environ, RUST_LOG="off")
    work = tempfile.mkdtemp(prefix="troupe-startup-")
    try:
        if a.only in (None, "explain"):
            bench_explain(troupe, a.model, a.runs, a.max_tokens, work, env)
        if a.only in (None, "search"):
            bench_search(troupe, a.model, a.embed_model, a.runs, a.search_repo, work, env)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
