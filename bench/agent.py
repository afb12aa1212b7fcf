#!/usr/bin/env python3
"""Agent cost benchmark: `loopspy agent` watching a fleet of asyncio workers.

    python3 bench/agent.py [--workers 16] [--minutes 60] [--rate 100] [--python PY]

Builds nothing: run `cargo build --release` first. Starts --workers asyncio workers
(tests/fixtures/agent_worker.py: a quarter of them block their loop 120 ms every 400 ms, the
rest only await), then the agent restricted to them (--match on a token in their command
lines) at --rate, scraping its /metrics every 15 s as Prometheus would. Measures

- the agent's own CPU in cores: user + system time of the agent process (its rusage from
  wait4, all threads) over its wall time, and per minute from /proc/PID/stat;
- its RSS every 15 s (VmRSS), to see it flat over the soak;
- what the scrapes said: targets, achieved rate per worker, incidents counted.

Prints a Markdown report (docs/performance.md keeps the latest one).
"""
import argparse
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOOPSPY = os.environ.get("LOOPSPY_BIN", os.path.join(ROOT, "target", "release", "loopspy"))
WORKER = os.path.join(ROOT, "tests", "fixtures", "agent_worker.py")
TICKS = os.sysconf("SC_CLK_TCK")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def scrape(port):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            return r.read().decode()
    except OSError:
        return ""


def values(page, metric):
    out = []
    for line in page.splitlines():
        if line.startswith(metric + "{") or line.startswith(metric + " "):
            out.append(float(line.rsplit(" ", 1)[1]))
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--workers", type=int, default=16)
    ap.add_argument("--minutes", type=float, default=60)
    ap.add_argument("--rate", type=int, default=100)
    ap.add_argument("--python", default=sys.executable)
    args = ap.parse_args()

    token = f"agent-bench-{os.getpid()}"
    workers = []
    for n in range(args.workers):
        mode = "blocking" if n % 4 == 0 else "quiet"
        workers.append(subprocess.Popen([args.python, WORKER, mode, token]))
    time.sleep(2)
    port = free_port()
    agent = subprocess.Popen(
        [LOOPSPY, "agent", "--match", token, "--rate", str(args.rate),
         "--listen", f"127.0.0.1:{port}", "--duration", f"{args.minutes * 60:.0f}s"],
        stderr=subprocess.DEVNULL)
    started = time.time()
    rss, minutes, last_page = [], [], ""
    last_cpu, last_at = 0.0, started
    status = usage = None
    try:
        while usage is None:
            time.sleep(15)
            # wait4, not poll(): the rusage of the agent (all its threads) comes with it.
            pid, st, ru = os.wait4(agent.pid, os.WNOHANG)
            if pid:
                status, usage = st, ru
                break
            now = time.time()
            try:
                rss.append((now - started, rss_mib(agent.pid)))
                cpu = cpu_seconds(agent.pid)
            except OSError:
                break
            page = scrape(port)
            if page:
                last_page = page
            if now - last_at >= 60:
                minutes.append((cpu - last_cpu) / (now - last_at))
                last_cpu, last_at = cpu, now
        if usage is None:
            _, status, usage = os.wait4(agent.pid, 0)
    finally:
        for w in workers:
            w.kill()
        for w in workers:
            w.wait()
    wall = time.time() - started
    cores = (usage.ru_utime + usage.ru_stime) / wall
    targets = values(last_page, "loopspy_targets")
    rates = values(last_page, "loopspy_sampling_rate_hz")
    incidents = sum(values(last_page, "loopspy_incidents_total"))
    print(f"## Agent: {args.workers} asyncio workers at {args.rate} Hz for {wall / 60:.1f} min\n")
    print(f"Host: {os.cpu_count()} cores; workers: {args.python}; one in four blocks 120 ms every 400 ms.\n")
    print("| figure | value |")
    print("|---|---|")
    print(f"| agent CPU (rusage, whole run) | **{cores:.3f} cores** |")
    if minutes:
        print(f"| agent CPU per minute (min / median / max) | {min(minutes):.3f} / {sorted(minutes)[len(minutes) // 2]:.3f} / {max(minutes):.3f} |")
    if rss:
        first = rss[0][1]
        tail = [r for t, r in rss if t >= wall / 2] or [rss[-1][1]]
        print(f"| RSS first / max / last | {first:.1f} / {max(r for _, r in rss):.1f} / {rss[-1][1]:.1f} MiB |")
        print(f"| RSS second half (min / max) | {min(tail):.1f} / {max(tail):.1f} MiB |")
        print(f"| max RSS (rusage) | {usage.ru_maxrss / 1024:.1f} MiB |")
    print(f"| targets in the last scrape | {targets[0] if targets else 'none'} |")
    if rates:
        print(f"| achieved rate per worker (min / max) | {min(rates):.0f} / {max(rates):.0f} Hz |")
    print(f"| incidents counted | {incidents:.0f} |")
    print(f"\nExit status of the agent: {status}.")


if __name__ == "__main__":
    main()
