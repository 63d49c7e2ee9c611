#!/usr/bin/env python3
"""Builds retrieval cases from a repository's git history: each non-merge commit's subject line is
a query, the non-test source files it modified are the gold answers, scored against the
repository's current snapshot (HEAD), where those files must still exist.

    make_cases.py REPO_DIR LANG_EXT [--max N] > cases.jsonl

Writes JSON lines {"query", "gold", "commit"}; the repository's code is never copied.
"""
import json
import re
import subprocess
import sys

SKIP_WORDS = re.compile(
    r"\b(bump|release|version|changelog|typo|merge|revert|dependabot|deps|ci|lint|format|fmt|"
    r"clippy|readme|docs?|copyright|license|prepare|pre-commit|vendor|cargo\.lock|update \w+ to)\b",
    re.I,
)
TEST_PATH = re.compile(r"(^|/)(tests?|testing|testdata|benches|examples?|docs?)(/|$)|(_test\.go$)|(^|/)test_[^/]*\.py$|_tests?\.rs$|(^|/)conftest\.py$")


def git(repo, *args):
    return subprocess.run(["git", "-C", repo, *args], check=True, capture_output=True, text=True).stdout


def main():
    repo, ext = sys.argv[1], sys.argv[2]
    limit = int(sys.argv[sys.argv.index("--max") + 1]) if "--max" in sys.argv else 60
    present = set(git(repo, "ls-files").splitlines())
    log = git(repo, "log", "--no-merges", "--format=%x00%H%x01%s", "--name-status", "HEAD")
    cases = []
    for entry in log.split("\x00")[1:]:
        head, _, files = entry.partition("\n")
        sha, _, subject = head.partition("\x01")
        subject = re.sub(r"\s*\(#\d+\)\s*$", "", subject).strip()
        subject = re.sub(r"^\w+(\([^)]*\))?!?:\s*", "", subject) if re.match(r"^(feat|fix|chore|refactor|perf|style|build)\b", subject) else subject
        if len(subject.split()) < 4 or SKIP_WORDS.search(subject) or subject.lower().startswith("test"):
            continue
        modified = []
        touched = 0
        for line in files.splitlines():
            parts = line.split("\t")
            if len(parts) < 2:
                continue
            touched += 1
            status, path = parts[0], parts[-1]
            if status == "M" and path.endswith(ext) and not TEST_PATH.search(path) and path in present:
                modified.append(path)
        # Focused commits only: 1-3 gold files and not a sweeping change.
        if not 1 <= len(modified) <= 3 or touched > 8:
            continue
        cases.append({"query": subject, "gold": sorted(modified), "commit": sha[:12]})
    # Spread the sample over the history, deterministically.
    if len(cases) > limit:
        step = len(cases) / limit
        cases = [cases[int(i * step)] for i in range(limit)]
    for c in cases:
        print(json.dumps(c))


if __name__ == "__main__":
    main()
