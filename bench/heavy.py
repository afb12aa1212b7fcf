#!/usr/bin/env python3
"""Heavy-target benchmark: can loopspy keep its rate on a worker with big thread pools?

    python3 bench/heavy.py [--python python3.12] [--rate 1000] [--seconds 10] [--runs 2]
                           [--compare OTHER_LOOPSPY_BINARY]

Builds nothing: run `cargo build --release` first. For each run it starts bench/heavy_target.py
(200 idle threads, 5 000 asyncio tasks waking every 10 ms, an 800-frame-deep 300 ms block every
2 s, each logged by the target), records it with `loopspy record --pid` under /usr/bin/time, and
prints a Markdown table: achieved rate and its share of the asked one, interval p99 / max, the
profiler's own CPU (cores), system calls per tick (from incidents.json), and the deep blocks
found against the target's log (found / logged, median duration error). With --compare, the
other binary (e.g. a build of an older commit) runs the same target in the same session.
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

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET = os.path.join(ROOT, "bench", "heavy_target.py")
LOOPSPY = os.environ.get("LOOPSPY_BIN", os.path.join(ROOT, "target", "release", "loopspy"))


def run_once(binary, python, rate, seconds, tmp):
    log = os.path.join(tmp, "heavy.jsonl")
    if os.path.exists(log):
        os.remove(log)
    target = subprocess.Popen([python, TARGET, "--seconds", str(seconds + 4), "--log", log])
    try:
        deadline = time.time() + 30
        while time.time() < deadline:
            if os.path.exists(log) and "ready" in open(log).read():
                break
            time.sleep(0.2)
        else:
            raise SystemExit("heavy_target.py did not start")
        time.sleep(1.0)
        out = os.path.join(tmp, "out")
        shutil.rmtree(out, ignore_errors=True)
        timing = os.path.join(tmp, "time.txt")
        subprocess.run(
            ["/usr/bin/time", "-f", "%U %S %e", "-o", timing, binary, "record", "--pid",
             str(target.pid), "--rate", str(rate), "--duration", f"{seconds}s", "-o", out],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        target.wait(timeout=seconds + 30)
    finally:
        if target.poll() is None:
            target.kill()
    user, system, wall = (float(x) for x in open(timing).read().split())
    report = json.load(open(os.path.join(out, "incidents.json")))
    rec = report["recording"]
    truth = [json.loads(line) for line in open(log) if '"start"' in line]
    deep = [i for i in report["incidents"] if i.get("culprit", {}).get("function") == "deep_block"]
    errors = []
    for t in truth:
        for inc in deep:
            start = inc["start_unix"]
            if t["start"] - 0.05 <= start <= t["end"]:
                errors.append(abs(inc["duration_ms"] - (t["end"] - t["start"]) * 1000))
                break
    # Only the blocks that happened while loopspy recorded count.
    rec_start = rec["start_unix"]
    rec_end = rec_start + rec["duration_s"]
    logged = [t for t in truth if t["start"] >= rec_start and t["end"] <= rec_end]
    return {
        "rate": rec["achieved_rate_hz"],
        "share": rec["achieved_rate_hz"] / rate,
        "p99_ms": rec["interval_us"]["p99"] / 1000,
        "max_ms": rec["interval_us"]["max"] / 1000,
        "cores": (user + system) / wall,
        "syscalls": rec.get("syscalls_per_tick"),
        "found": len(errors),
        "logged": len(logged),
        "error_ms": statistics.median(errors) if errors else None,
    }


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--python", default=shutil.which("python3.12") or sys.executable)
    parser.add_argument("--rate", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--compare", metavar="BINARY")
    args = parser.parse_args()
    binaries = [("loopspy", LOOPSPY)] + ([("compare", args.compare)] if args.compare else [])
    print(f"Heavy target, {args.python}, {args.rate} Hz asked, {args.seconds:.0f} s per run\n")
    print("| binary | run | achieved Hz | share | p99 ms | max ms | cores | vm_readv/tick | /proc reads/tick | deep blocks found | median error ms |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for run in range(args.runs):
            for name, binary in binaries:
                r = run_once(binary, args.python, args.rate, args.seconds, tmp)
                s = r["syscalls"] or {}
                err = "–" if r["error_ms"] is None else f"{r['error_ms']:.1f}"
                print(f"| {name} | {run + 1} | {r['rate']:.0f} | {r['share']:.1%} | {r['p99_ms']:.2f} | "
                      f"{r['max_ms']:.1f} | {r['cores']:.3f} | {s.get('process_vm_readv', '–')} | "
                      f"{s.get('proc_reads', '–')} | {r['found']}/{r['logged']} | {err} |", flush=True)


if __name__ == "__main__":
    main()
