"""Heavy benchmark target: what a production worker with big thread pools looks like.

- 200 idle threads (executor / driver pools) parked in `threading.Event.wait`;
- 5 000 asyncio tasks, each waking every 10 ms (a saturated-ish loop of short steps);
- every 2 s, a blocking call 800 frames deep (a recursion ending in `time.sleep(0.3)`),
  logged to --log as `{"start": t0, "end": t1}` lines: the ground truth of the incidents.

    python3 bench/heavy_target.py --seconds 20 --log /tmp/heavy.jsonl
"""
import argparse
import asyncio
import json
import sys
import threading
import time


def park(stop):
    stop.wait()


def deep_block(level, seconds):
    if level > 0:
        return deep_block(level - 1, seconds)
    time.sleep(seconds)


async def ticker(period):
    while True:
        await asyncio.sleep(period)


async def main(args):
    stop = threading.Event()
    threads = [threading.Thread(target=park, args=(stop,), daemon=True) for _ in range(args.threads)]
    for t in threads:
        t.start()
    tasks = [asyncio.ensure_future(ticker(0.010)) for _ in range(args.tasks)]
    sys.setrecursionlimit(10_000)
    with open(args.log, "w") as log:
        log.write(json.dumps({"ready": time.time()}) + "\n")
        log.flush()
        deadline = time.monotonic() + args.seconds
        while time.monotonic() < deadline:
            await asyncio.sleep(2.0)
            start = time.time()
            deep_block(args.depth, 0.3)
            log.write(json.dumps({"start": start, "end": time.time()}) + "\n")
            log.flush()
    for t in tasks:
        t.cancel()
    stop.set()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--log", required=True)
    parser.add_argument("--threads", type=int, default=200)
    parser.add_argument("--tasks", type=int, default=5000)
    parser.add_argument("--depth", type=int, default=800)
    asyncio.run(main(parser.parse_args()))
