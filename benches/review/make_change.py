"""Builds the review benchmark's repository: ten Python modules committed, then a change of
about 500 changed lines across all ten (new functions and edited ones), left in the working
tree. Deterministic: the same repository every run.

    python3 benches/review/make_change.py DIR
"""

import os
import subprocess
import sys

FILES = 10
FUNCS = 8


def func(m, i, edited):
    name = f"step_{m}_{i}"
    body = [
        f"def {name}(items, limit=10):",
        f'    """Process items for stage {i} of module {m}."""',
        "    out = []",
        "    for k, item in enumerate(items):",
        "        if k >= limit:",
        "            break",
        f"        out.append(item * {i + 1} + {m})",
        "    return out",
    ]
    if edited:
        body = [
            f"def {name}(items, limit=10, scale=1):",
            f'    """Process items for stage {i} of module {m}, scaled."""',
            "    out = []",
            "    total = 0",
            "    for k in range(len(items) - 1):",
            "        if k > limit:",
            "            break",
            f"        value = items[k] * {i + 1} * scale + {m}",
            "        total += value",
            "        out.append(value)",
            "    if total == 0:",
            "        return None",
            "    return out",
        ]
    return "\n".join(body) + "\n\n\n"


def module(m, edited):
    text = f'"""Module {m} of the benchmark project."""\n\n\n'
    for i in range(FUNCS):
        text += func(m, i, edited and i % 3 == 0)
    if edited:
        text += (
            f"def summary_{m}(rows):\n"
            "    result = {}\n"
            "    for row in rows:\n"
            "        key = row['name']\n"
            "        result[key] = result.get(key, 0) + row['count']\n"
            "    return sorted(result.items(), key=lambda kv: kv[1])\n"
        )
    return text


def git(repo, *args):
    subprocess.run(
        ["git", "-c", "user.name=bench", "-c", "user.email=bench@invalid", *args],
        cwd=repo,
        check=True,
        stdout=subprocess.DEVNULL,
    )


def main():
    repo = sys.argv[1]
    os.makedirs(repo, exist_ok=True)
    git(repo, "init", "-q")
    for m in range(FILES):
        with open(os.path.join(repo, f"mod_{m}.py"), "w") as f:
            f.write(module(m, False))
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "base")
    for m in range(FILES):
        with open(os.path.join(repo, f"mod_{m}.py"), "w") as f:
            f.write(module(m, True))
    stat = subprocess.run(
        ["git", "diff", "--numstat"], cwd=repo, check=True, capture_output=True, text=True
    ).stdout
    changed = sum(int(a) + int(d) for a, d, _ in (l.split("\t") for l in stat.splitlines()))
    print(f"{repo}: {len(stat.splitlines())} files, {changed} changed lines")


if __name__ == "__main__":
    main()
