"""A small asyncio "service" that blocks its own event loop in the ways real services do.

Run it under loopspy (from the repository root):

    cargo run --release -- record -o demo-out -- python3 examples/demo_app.py

It serves fake requests for a few seconds (--seconds, default 6) and then exits, so the
recording ends by itself. Every few hundred milliseconds one handler does something that
blocks the loop:

* a synchronous "database" call (time.sleep standing in for a blocking driver),
* a CPU-heavy report built in the handler,
* a blocking HTTP request with urllib against a slow local server,
* a sync file write with fsync,
while hundreds of well-behaved tasks keep the loop busy but healthy.
"""
import argparse
import asyncio
import http.server
import json
import os
import tempfile
import threading
import time
import urllib.request


class SlowHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        time.sleep(0.12)  # a slow upstream
        body = b'{"ok": true}'
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def start_slow_upstream():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), SlowHandler)
    threading.Thread(target=server.serve_forever, daemon=True, name="upstream").start()
    return server.server_address[1]


def query_orders_sync(customer_id):
    time.sleep(0.08)  # stands in for a blocking DB driver call
    return [{"customer": customer_id, "order": n} for n in range(3)]


async def handle_orders(customer_id):
    return query_orders_sync(customer_id)


async def handle_report():
    score = 0
    for i in range(2_000_000):  # CPU-heavy work inside a handler
        score = (score + i * 7919) % 1013
    return json.dumps({"score": score})


async def handle_proxy(port):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as resp:
        return resp.read()


async def handle_audit_log(path):
    with open(path, "ab") as f:
        f.write(b"x" * 4_000_000)
        f.flush()
        os.fsync(f.fileno())


async def healthy_client(deadline):
    while time.time() < deadline:
        await asyncio.sleep(0.005)


async def main(seconds):
    port = start_slow_upstream()
    audit = os.path.join(tempfile.mkdtemp(), "audit.log")
    deadline = time.time() + seconds
    clients = [asyncio.create_task(healthy_client(deadline)) for _ in range(200)]
    handlers = [
        lambda: handle_orders(42),
        handle_report,
        lambda: handle_proxy(port),
        lambda: handle_audit_log(audit),
    ]
    n = 0
    while time.time() < deadline:
        await asyncio.sleep(0.3)
        await handlers[n % len(handlers)]()
        n += 1
    await asyncio.gather(*clients)
    os.remove(audit)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=6.0)
    args = parser.parse_args()
    print(f"demo_app: pid {os.getpid()}, blocking its loop for {args.seconds:.0f}s", flush=True)
    asyncio.run(main(args.seconds))
