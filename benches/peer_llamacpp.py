#!/usr/bin/env python3
"""Run the same workload through troupe's engine and llama.cpp's own server, print both and the ratio.

1. Runs `troupe bench engine --json` with the given flags and TROUPE_BENCH_WORKLOAD set, so
   troupe writes the exact token prompts it sent.
2. For each concurrency level, starts llama.cpp's server from the xllamacpp wheel (same model,
   threads, n_parallel = concurrency, context per slot as troupe's) on 127.0.0.1, replays the same
   token prompts through /v1/completions (streamed, greedy, ignore_eos, max_tokens = gen) at the
   same time (or staggered), and measures the same quantities the same way: aggregate tok/s =
   generated tokens / (last token received - first request sent), ttft per request from its own
   send time, prompt tokens evaluated and cached as the server reports them (`timings`).
3. Prints both sides and troupe/peer ratios; `--json FILE` also writes everything.

Usage (the venv must have xllamacpp: ~/.cache/troupe/venv/bin/pip install xllamacpp):
  ~/.cache/troupe/venv/bin/python benches/peer_llamacpp.py --troupe target/release/troupe \
      --model ~/.cache/troupe/models/smollm2-135m-instruct.gguf --concurrency 1,2,4,8 --threads 2
"""

import argparse
import http.client
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time

SERVER_SCRIPT = """
import sys, time, xllamacpp as x
model, port, n_ctx, n_parallel, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
p = x.CommonParams()
p.model.path = model
p.port = port
p.hostnames = ["127.0.0.1"]
p.n_ctx = n_ctx
p.n_parallel = n_parallel
p.cpuparams.n_threads = threads
p.cpuparams_batch.n_threads = threads
s = x.Server(p)
while True:
    time.sleep(1)
"""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_health(port, proc, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("llama.cpp server exited early")
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            c.request("GET", "/health")
            if c.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError("llama.cpp server did not come up")


def one_request(port, prompt, gen, out):
    body = json.dumps({
        "prompt": prompt, "max_tokens": gen, "temperature": 0.0, "top_k": 1, "stream": True,
        "ignore_eos": True, "cache_prompt": True, "stream_options": {"include_usage": True},
    })
    sent = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=3600)
    conn.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
    resp = conn.getresponse()
    if resp.status != 200:
        raise RuntimeError(f"server status {resp.status}: {resp.read()[:300]!r}")
    first = None
    last = sent
    timings = {}
    usage = {}
    chunks = 0
    for raw in resp:
        line = raw.decode("utf-8", "replace").strip()
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            break
        ev = json.loads(data)
        if ev.get("timings"):
            timings = ev["timings"]
        if ev.get("usage"):
            usage = ev["usage"]
        for ch in ev.get("choices") or []:
            if ch.get("text"):
                now = time.perf_counter()
                if first is None:
                    first = now
                last = now
                chunks += 1
    last = max(last, time.perf_counter())
    generated = usage.get("completion_tokens") or timings.get("predicted_n") or chunks
    out.append({
        "sent": sent, "first": first or last, "last": last, "generated": generated,
        "prompt_n": timings.get("prompt_n"), "cache_n": timings.get("cache_n"),
        "decode_tok_s": timings.get("predicted_per_second") or 0.0,
        "prompt_tokens": len(prompt),
    })


def drive(port, prompts, gen):
    out = []
    threads = [threading.Thread(target=one_request, args=(port, p, gen, out)) for p in prompts]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if len(out) != len(prompts):
        raise RuntimeError("a request failed")
    return out


def pct(values, q):
    s = sorted(values)
    return s[min(len(s) - 1, round((len(s) - 1) * q))] if s else 0.0


def peer_row(args, row, python):
    c = row["concurrency"]
    prompts = row["prompts"]
    gen = row["gen"]
    longest = max(len(p) for p in prompts)
    ctx_per_seq = ((longest + gen + 64 + 255) // 256) * 256
    port = free_port()
    proc = subprocess.Popen(
        [python, "-c", SERVER_SCRIPT, args.model, str(port), str(ctx_per_seq * c), str(c),
         str(args.threads)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_health(port, proc)
        t0 = time.perf_counter()
        if row.get("stagger") and c > 1:
            outs = drive(port, prompts[:1], gen) + drive(port, prompts[1:], gen)
        else:
            outs = drive(port, prompts, gen)
        outs.sort(key=lambda o: o["sent"])
        end = max(o["last"] for o in outs)
        wall = end - t0
        generated = sum(o["generated"] for o in outs)
        ttfts = [(o["first"] - o["sent"]) * 1000 for o in outs]
        computed = sum(o["prompt_n"] or 0 for o in outs)
        cached = sum(o["cache_n"] or 0 for o in outs)
        return {
            "concurrency": c,
            "aggregate_tok_s": generated / wall if wall > 0 else 0.0,
            "per_seq_tok_s": sum(o["decode_tok_s"] for o in outs) / len(outs),
            "ttft_p50_ms": pct(ttfts, 0.5),
            "ttft_p95_ms": pct(ttfts, 0.95),
            "prompt_tokens": sum(o["prompt_tokens"] for o in outs),
            "cached_tokens": cached,
            "prompt_tokens_computed": computed,
            "generated_tokens": generated,
            "wall_ms": wall * 1000,
            "ttft_first_ms": ttfts[0],
            "ttft_rest_max_ms": max(ttfts[1:]) if len(ttfts) > 1 else 0.0,
        }
    finally:
        proc.kill()
        proc.wait()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--troupe", default="target/release/troupe")
    ap.add_argument("--model", required=True)
    ap.add_argument("--concurrency", default="1,2,4,8")
    ap.add_argument("--prompt-tokens", type=int, default=104)
    ap.add_argument("--gen", type=int, default=128)
    ap.add_argument("--shared-prefix-tokens", type=int, default=0)
    ap.add_argument("--stagger", action="store_true")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", metavar="FILE", help="also write all results to FILE")
    args = ap.parse_args()
    args.model = os.path.expanduser(args.model)

    with tempfile.TemporaryDirectory() as tmp:
        workload_file = os.path.join(tmp, "workload.json")
        cmd = [args.troupe, "--json", "--model", args.model, "bench", "engine",
               "--concurrency", args.concurrency, "--prompt-tokens", str(args.prompt_tokens),
               "--gen", str(args.gen), "--shared-prefix-tokens", str(args.shared_prefix_tokens),
               "--threads", str(args.threads)]
        if args.stagger:
            cmd.append("--stagger")
        print("troupe:", " ".join(cmd), file=sys.stderr)
        env = dict(os.environ, TROUPE_BENCH_WORKLOAD=workload_file)
        res = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if res.returncode != 0:
            sys.exit(f"troupe bench failed ({res.returncode}):\n{res.stderr}")
        troupe = json.loads(res.stdout.strip().splitlines()[-1])["rows"]
        with open(workload_file) as f:
            workload = json.load(f)["rows"]

    peer = []
    for row in workload:
        print(f"peer: concurrency {row['concurrency']} ...", file=sys.stderr)
        peer.append(peer_row(args, row, sys.executable))

    header = ("conc", "side", "agg tok/s", "per-seq", "ttft p50", "ttft p95", "ttft 1st",
              "ttft rest", "prompt", "computed", "gen", "wall ms")
    print("%4s %-6s %9s %8s %9s %9s %9s %9s %7s %8s %6s %8s" % header)
    for t, p in zip(troupe, peer):
        for side, r in (("troupe", t), ("peer", p)):
            print("%4d %-6s %9.1f %8.1f %9.0f %9.0f %9.0f %9.0f %7d %8d %6d %8.0f" % (
                r["concurrency"], side, r["aggregate_tok_s"], r["per_seq_tok_s"], r["ttft_p50_ms"],
                r["ttft_p95_ms"], r["ttft_first_ms"], r["ttft_rest_max_ms"], r["prompt_tokens"],
                r["prompt_tokens_computed"], r["generated_tokens"], r["wall_ms"]))
        ratio = t["aggregate_tok_s"] / p["aggregate_tok_s"] if p["aggregate_tok_s"] else float("nan")
        wall = t["wall_ms"] / p["wall_ms"] if p["wall_ms"] else float("nan")
        print("     ratio troupe/peer: aggregate %.2fx, wall %.2fx" % (ratio, wall))
    base = troupe[0]["aggregate_tok_s"] if troupe else 0
    if base:
        gains = ", ".join("%d: %.2fx" % (r["concurrency"], r["aggregate_tok_s"] / base) for r in troupe)
        print("troupe gain over its first row:", gains)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "troupe": troupe, "peer": peer}, f, indent=2)


if __name__ == "__main__":
    main()
