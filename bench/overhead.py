#!/usr/bin/env python3
"""Profiler overhead benchmark: loopspy vs py-spy on the same target, in one run.

    python3 bench/overhead.py [--seconds 15] [--rate 1000] [--rss-minutes 10]

Builds nothing: run `cargo build --release` first. Installs py-spy (PyPI) into bench/.venv
the first time. For each profiler it starts a fresh bench/target.py (asyncio, a 30-frame deep
stack on the loop thread, 3 idle threads), attaches after a warm-up, and measures

- the profiler's CPU use in cores (user + system time of the profiler process / wall time),
- the target's throughput while profiled vs unprofiled (its own per-second work counter),
- for loopspy, the achieved sampling rate it reports;

then the highest rate loopspy sustains (achieved >= 95% of asked, on at most one core) and, with --rss-minutes,
loopspy's RSS over a long recording at --rate. Prints a Markdown report (docs/performance.md
keeps the latest one).
"""
import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET = os.path.join(ROOT, "bench", "target.py")
LOOPSPY = os.environ.get("LOOPSPY_BIN", os.path.join(ROOT, "target", "release", "loopspy"))
VENV = os.path.join(ROOT, "bench", ".venv")
WARMUP = 3.0


def py_spy():
    exe = os.path.join(VENV, "bin", "py-spy")
    if not os.path.exists(exe):
        subprocess.run([sys.executable, "-m", "venv", VENV], check=True)
        subprocess.run([os.path.join(VENV, "bin", "pip"), "install", "--quiet", "py-spy"], check=True)
    return exe


SID_ROOT = os.environ.get("LOOPSPY_SID_ROOT", os.path.expanduser("~/.cache/loopspy/sid-root"))


def in_root(python):
    """`chroot:ROOT:python3.15` runs the target (and Tachyon) inside that userland."""
    if python.startswith("chroot:"):
        _, root, exe = python.split(":", 2)
        return root, exe
    return None, python


def start_target(python, seconds, report):
    root, exe = in_root(python)
    if root:
        # The target runs chrooted, as in a container; it sees its files at /tmp/loopspy-bench.
        inner = os.path.join(root, "tmp", "loopspy-bench")
        os.makedirs(inner, exist_ok=True)
        shutil.copy(TARGET, os.path.join(inner, "target.py"))
        name = os.path.basename(report)
        proc = subprocess.Popen(["chroot", root, exe, "/tmp/loopspy-bench/target.py", "--report",
                                 f"/tmp/loopspy-bench/{name}", "--seconds", str(seconds)])
        time.sleep(WARMUP)
        proc.report_path = os.path.join(inner, name)
        return proc
    proc = subprocess.Popen([python, TARGET, "--report", report, "--seconds", str(seconds)])
    proc.report_path = report
    time.sleep(WARMUP)
    return proc


def rates(report, since, until):
    """Per-second work counts reported in [since, until]."""
    with open(report) as f:
        rows = [line.split() for line in f if line.strip()]
    return [int(n) for t, n in rows if since + 1.0 <= float(t) <= until]


def run_profiled(python, seconds, argv_for_pid, tmp, name):
    """Target under one profiler (argv_for_pid None: no profiler). Returns a result dict."""
    report = os.path.join(tmp, f"{name}.report")
    target = start_target(python, seconds + WARMUP + 2, report)
    begin = time.time()
    cores = None
    extra = {}
    if argv_for_pid:
        argv, after = argv_for_pid(target.pid)
        wall = time.time()
        prof = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _, status, usage = os.wait4(prof.pid, 0)
        wall = time.time() - wall
        cores = (usage.ru_utime + usage.ru_stime) / wall
        extra = after() if after else {}
    else:
        time.sleep(seconds)
    end = time.time()
    target.wait()
    work = rates(target.report_path, begin, end)
    return {"name": name, "cores": cores, "work": statistics.mean(work) if work else 0, **extra}


def loopspy_argv(rate, seconds, out, extra=()):
    def argv(pid):
        def after():
            with open(os.path.join(out, "incidents.json")) as f:
                rec = json.load(f)["recording"]
            return {"achieved": rec.get("achieved_rate_hz"), "errors": rec.get("sample_errors"),
                    "samples": rec.get("samples")}
        shutil.rmtree(out, ignore_errors=True)
        return [LOOPSPY, "record", "--pid", str(pid), "--rate", str(rate), "--duration",
                f"{seconds}s", "-o", out, *extra], after
    return argv


def pyspy_argv(exe, rate, seconds, out, nonblocking):
    def argv(pid):
        cmd = [exe, "record", "--pid", str(pid), "--rate", str(rate), "--duration",
               str(int(seconds)), "--idle", "-o", out]
        if nonblocking:
            cmd.append("--nonblocking")
        return cmd, None
    return argv


def tachyon_argv(python, rate, seconds, out):
    """CPython 3.15's own sampler, run by the target's interpreter inside its root."""
    root, exe = in_root(python)

    def argv(pid):
        return ["chroot", root, exe, "-m", "profiling.sampling", "attach", "-r", str(rate), "-a",
                "-d", str(int(seconds)), "--collapsed", "-o", "/tmp/loopspy-bench/tachyon.txt",
                str(pid)], None
    return argv


def rss_over_time(python, rate, minutes, tmp):
    report = os.path.join(tmp, "rss.report")
    target = start_target(python, minutes * 60 + 30, report)
    out = os.path.join(tmp, "rss-out")
    prof = subprocess.Popen([LOOPSPY, "record", "--pid", str(target.pid), "--rate", str(rate),
                             "--duration", f"{minutes}m", "-o", out],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    series = []
    while prof.poll() is None:
        try:
            with open(f"/proc/{prof.pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        series.append(int(line.split()[1]) / 1024)
        except FileNotFoundError:
            break
        time.sleep(5)
    target.kill()
    target.wait()
    return series


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--python", default=shutil.which("python3.12") or sys.executable,
                        help="the target's interpreter; chroot:ROOT:python3.15 runs it in ROOT")
    parser.add_argument("--sid", metavar="MINOR",
                        help="shorthand for --python chroot:$LOOPSPY_SID_ROOT:/usr/bin/pythonMINOR; "
                             "with 3.15 also measures CPython's own sampler (Tachyon)")
    parser.add_argument("--rates", default="1000,2000,5000,10000,20000",
                        help="rates of the highest-rate table")
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument("--rate", type=int, default=1000)
    parser.add_argument("--rss-minutes", type=float, default=0)
    parser.add_argument("--rss-only", action="store_true", help="skip the overhead and rate runs")
    parser.add_argument("--repeat", type=int, default=3, help="rounds of the overhead runs")
    args = parser.parse_args()
    if args.sid:
        args.python = f"chroot:{SID_ROOT}:/usr/bin/python{args.sid}"
    if not os.path.exists(LOOPSPY):
        sys.exit("build first: cargo build --release")
    exe = py_spy()
    version = subprocess.run([exe, "--version"], capture_output=True, text=True).stdout.strip()
    tmp = tempfile.mkdtemp(prefix="loopspy-bench-")
    s, r = args.seconds, args.rate
    if args.rss_only:
        report_rss(args, tmp)
        return
    runs = [
        ("no profiler", None),
        (f"loopspy record --rate {r}", loopspy_argv(r, s, os.path.join(tmp, "ls"))),
        (f"loopspy record --rate {r} --reader py-spy",
         loopspy_argv(r, s, os.path.join(tmp, "lp"), ["--reader", "py-spy"])),
        (f"py-spy record --nonblocking --idle --rate {r}",
         pyspy_argv(exe, r, s, os.path.join(tmp, "a.svg"), True)),
        (f"py-spy record --idle --rate {r} (pauses the target)",
         pyspy_argv(exe, r, s, os.path.join(tmp, "b.svg"), False)),
    ]
    if args.sid == "3.15":
        runs.append((f"python3.15 -m profiling.sampling attach -a -r {r} (Tachyon)",
                     tachyon_argv(args.python, r, s, None)))
    # Every profiler runs --repeat times, in rounds (each round runs all of them once), so that
    # a slow spell of the machine hits every row alike; the rows report means.
    per_label = {label: [] for label, _ in runs}
    for round_no in range(args.repeat):
        for i, (label, argv) in enumerate(runs):
            per_label[label].append(run_profiled(args.python, s, argv, tmp, f"run{round_no}-{i}"))

    def mean_of(rows, key):
        values = [row[key] for row in rows if row.get(key) is not None]
        return statistics.mean(values) if values else None

    results = []
    for label, _ in runs:
        rows = per_label[label]
        results.append({"label": label, "cores": mean_of(rows, "cores"),
                        "work": mean_of(rows, "work"), "achieved": mean_of(rows, "achieved"),
                        "works": [row["work"] for row in rows]})
    base = results[0]["work"]
    pyspy_nb = results[3]["cores"]
    tachyon = results[5]["cores"] if len(results) > 5 else None
    root, inner_exe = in_root(args.python)
    py_cmd = ["chroot", root, inner_exe] if root else [args.python]
    py = subprocess.run([*py_cmd, "--version"], capture_output=True, text=True).stdout.strip()
    print(f"## Overhead at {r} Hz, {s:.0f} s per run, {args.repeat} rounds ({platform.machine()}, "
          f"{os.cpu_count()} cores, {py}, {version})\n")
    print("| profiler | CPU (cores) | vs py-spy --nonblocking | target slowdown | target work/s per round | achieved rate |")
    print("|---|---|---|---|---|---|")
    for res in results:
        cores = "" if res["cores"] is None else f"{res['cores']:.3f}"
        ratio = "" if res["cores"] is None else f"{res['cores'] / pyspy_nb:.2f}x"
        if tachyon is not None and res["cores"] is not None:
            ratio += f" ({res['cores'] / tachyon:.2f}x Tachyon)"
        slow = (1 - res["work"] / base) * 100 if base else 0
        works = ", ".join(f"{w:.0f}" for w in res["works"])
        ach = f"{res['achieved']:.0f} Hz" if res.get("achieved") else ""
        print(f"| {res['label']} | {cores} | {ratio} | {slow:+.1f}% | {works} | {ach} |")

    print("\n## Highest loopspy rate\n")
    print("| asked | achieved | CPU (cores) | read errors | sustained |")
    print("|---|---|---|---|---|")
    for rate in (int(x) for x in args.rates.split(",") if x):
        res = run_profiled(args.python, 6, loopspy_argv(rate, 6, os.path.join(tmp, f"r{rate}")),
                           tmp, f"rate{rate}")
        errors = f"{res['errors'] / max(res['samples'] + res['errors'], 1) * 100:.1f}%"
        sustained = "yes" if res["achieved"] >= 0.95 * rate and res["cores"] <= 1.0 else "no"
        print(f"| {rate} | {res['achieved']:.0f} | {res['cores']:.3f} | {errors} | {sustained} |")

    if args.rss_minutes:
        report_rss(args, tmp)
    shutil.rmtree(tmp, ignore_errors=True)


def report_rss(args, tmp):
    series = rss_over_time(args.python, args.rate, args.rss_minutes or 10, tmp)
    print(f"\n## loopspy RSS over {args.rss_minutes or 10:g} min at {args.rate} Hz\n")
    print(f"first {series[0]:.1f} MiB, after 1 min {series[min(12, len(series) - 1)]:.1f} MiB, "
          f"peak {max(series):.1f} MiB, last {series[-1]:.1f} MiB ({len(series)} readings, every 5 s)")
    print("per minute: " + ", ".join(f"{series[i]:.1f}" for i in range(0, len(series), 12)) + " MiB")


if __name__ == "__main__":
    main()
