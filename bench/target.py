"""Benchmark target: an asyncio service with a deep stack and idle threads.

One task recurses 30 frames deep and does CPU work there in short steps (yielding to the loop
after each), so the loop thread always has a deep stack to read; three idle threads sit in
waits. Every second it appends the work done (iterations) to --report, which is how the
benchmark measures the target's slowdown under each profiler.
"""
import argparse
import asyncio
import threading
import time


def work(n):
    total = 0
    for i in range(n):
        total += i * i % 7
    return total


async def deep(level, counter):
    if level > 0:
        return await deep(level - 1, counter)
    while True:
        work(200)
        counter[0] += 1
        if counter[0] % 20 == 0:
            await asyncio.sleep(0)


async def reporter(counter, path, seconds):
    start = time.time()
    last = counter[0]
    with open(path, "w") as out:
        while time.time() - start < seconds:
            await asyncio.sleep(1.0)
            now = counter[0]
            out.write(f"{time.time():.3f} {now - last}\n")
            out.flush()
            last = now


async def main(args):
    counter = [0]
    worker = asyncio.ensure_future(deep(30, counter))
    await reporter(counter, args.report, args.seconds)
    worker.cancel()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--report", required=True)
    parser.add_argument("--seconds", type=float, default=20)
    args = parser.parse_args()
    stop = threading.Event()
    for n in range(3):
        threading.Thread(target=stop.wait, name=f"idle-{n}", daemon=True).start()
    asyncio.run(main(args))
