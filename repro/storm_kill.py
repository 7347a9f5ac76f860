#!/usr/bin/env python3
"""kill -9 of one invoicing server mid-storm, two servers on one database.

Usage: repro/storm_kill.py DATABASE_URL [--invoices N] [--dups K] [--kills M]

Starts two `invoicing` servers (target/debug/invoicing, build it first) on
DATABASE_URL, creates N invoices with concurrent same-key creates spread
over both servers, issues them, then pays each one K times concurrently
(same key, fresh keys, no key, the same event), spread over both servers,
while server A is killed with SIGKILL M times and restarted on its port.
Every client retries connection errors, 409 (after Retry-After) and 503
until it gets a final answer. Then it checks, in the database and in the
answers:

  * one invoice per (client, key), one payment per invoice, every invoice paid
  * no idempotency record left `running` once every request settled
  * no stored 5xx
  * every 409/429/503 answer had Retry-After; every error was problem+json
  * replays carry Idempotent-Replayed: true

Exit status 0 when every check holds. Prints what it saw.
"""
import argparse
import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "debug", "invoicing")

violations = []
stats = Counter()


def violation(msg):
    violations.append(msg)
    if len(violations) < 30:
        print("VIOLATION:", msg, flush=True)


async def http(port, method, path, headers=(), body=None, timeout=30):
    r, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 5)
    try:
        head = f"{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        for k, v in headers:
            head += f"{k}: {v}\r\n"
        data = body.encode() if body is not None else b""
        head += f"Content-Length: {len(data)}\r\n\r\n"
        w.write(head.encode() + data)
        await w.drain()
        raw = await asyncio.wait_for(r.read(), timeout)
    finally:
        w.close()
    if not raw:
        raise ConnectionError("empty answer")
    h, _, b = raw.partition(b"\r\n\r\n")
    lines = h.decode("latin1").split("\r\n")
    status = int(lines[0].split()[1])
    hdrs = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        hdrs[k.strip().lower()] = v.strip()
    if hdrs.get("transfer-encoding") == "chunked":
        out, rest = b"", b
        while rest:
            n, _, rest = rest.partition(b"\r\n")
            n = int(n, 16)
            if n == 0:
                break
            out += rest[:n]
            rest = rest[n + 2:]
        b = out
    elif "content-length" in hdrs and len(b) != int(hdrs["content-length"]):
        raise ConnectionError("truncated answer")
    return status, hdrs, b


def check_answer(kind, status, hdrs, body):
    stats[(kind, status, hdrs.get("idempotent-replayed") == "true")] += 1
    needs_retry_after = (status == 409 and b"InProgress" in body) or status == 429 or b"StoreFull" in body
    if needs_retry_after and "retry-after" not in hdrs:
        violation(f"{kind}: {status} without Retry-After: {body[:120]!r}")
    if status >= 400 and hdrs.get("content-type") != "application/problem+json":
        violation(f"{kind}: {status} is not problem+json ({hdrs.get('content-type')}): {body[:120]!r}")
    if status >= 500 and status != 503:
        violation(f"{kind}: {status}: {body[:200]!r}")


async def until_final(kind, ports, method, path, headers=(), body=None, deadline=120):
    """Sends until a final answer (not a connection error, 409-in-progress or 503)."""
    start = time.monotonic()
    attempt = 0
    while time.monotonic() - start < deadline:
        port = ports[attempt % len(ports)] if attempt else random.choice(ports)
        attempt += 1
        try:
            status, hdrs, b = await http(port, method, path, headers, body)
        except (ConnectionError, OSError, asyncio.TimeoutError, IndexError, ValueError):
            stats[(kind, "conn-error")] += 1
            await asyncio.sleep(0.2)
            continue
        check_answer(kind, status, hdrs, b)
        in_progress = status == 409 and b"InProgress" in b
        if in_progress or status == 503 or status == 429:
            ra = int(hdrs.get("retry-after", "1"))
            await asyncio.sleep(min(ra, 3) * random.uniform(0.3, 1.0))
            continue
        return status, hdrs, b
    violation(f"{kind} {path}: no final answer within {deadline}s")
    return None, {}, b""


class Servers:
    def __init__(self, url, ports):
        self.url, self.ports, self.procs = url, ports, {}
        self.logs = {p: open(f"/tmp/storm_kill_{p}.log", "ab") for p in ports}

    def start(self, port):
        env = dict(os.environ, RUST_LOG="warn")
        p = subprocess.Popen(
            [BIN, "--listen", f"127.0.0.1:{port}", "--database-url", self.url],
            stdout=subprocess.PIPE, stderr=self.logs[port], env=env)
        line = p.stdout.readline().decode()
        if "listening" not in line:
            raise SystemExit(f"server on {port} did not start: {line!r}")
        self.procs[port] = p

    def kill9(self, port):
        p = self.procs.pop(port)
        os.kill(p.pid, signal.SIGKILL)
        p.wait()

    def stop_all(self):
        for p in self.procs.values():
            p.terminate()
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def db_query(url, sql):
    if url.startswith("sqlite"):
        path = url.split("://", 1)[1].split("?")[0]
        out = subprocess.run(["sqlite3", "-separator", "|", path, sql], capture_output=True, text=True)
    elif url.startswith("postgres"):
        out = subprocess.run(["psql", url, "-AtF|", "-c", sql], capture_output=True, text=True)
    else:
        rest = url.split("://", 1)[1]
        userhost, db = rest.split("/", 1)
        user, host = userhost.split("@")
        host, _, port = host.partition(":")
        out = subprocess.run(["mysql", "-u", user, "-h", host, "-P", port or "3306", "-N", "-B", db, "-e", sql],
                             capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"query failed: {sql}: {out.stderr}")
    return [line.replace("\t", "|").split("|") for line in out.stdout.strip().splitlines() if line]


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("url")
    ap.add_argument("--invoices", type=int, default=30)
    ap.add_argument("--dups", type=int, default=8)
    ap.add_argument("--kills", type=int, default=3)
    ap.add_argument("--ports", default="38201,38202")
    args = ap.parse_args()
    ports = [int(p) for p in args.ports.split(",")]
    servers = Servers(args.url, ports)
    for p in ports:
        servers.start(p)
    tag = f"{random.randrange(1 << 30):x}"
    ct = ("Content-Type", "application/json")
    try:
        killer_done = asyncio.Event()

        async def killer():
            for _ in range(args.kills):
                await asyncio.sleep(random.uniform(0.3, 1.5))
                servers.kill9(ports[0])
                stats["kill -9"] += 1
                await asyncio.sleep(random.uniform(0.1, 1.0))
                servers.start(ports[0])
            killer_done.set()

        # Phase 1: concurrent same-key creates, spread over both servers.
        async def create(i):
            key = f"create-{tag}-{i}"
            body = json.dumps({"customer": f"C{i}", "amount_cents": 100 + i, "currency": "EUR"})
            answers = await asyncio.gather(*[
                until_final("create", ports, "POST", "/invoices", [ct, ("Idempotency-Key", key), ("X-Client-Id", "storm")], body)
                for _ in range(4)])
            ids = {json.loads(b)["id"] for s, h, b in answers if s == 201}
            if len(ids) != 1 or any(s != 201 for s, h, b in answers):
                violation(f"create {key}: answers {[s for s, h, b in answers]} ids {ids}")
            return i, next(iter(ids)) if ids else None

        kill_task = asyncio.create_task(killer())
        created = await asyncio.gather(*[create(i) for i in range(args.invoices)])
        invoices = {i: iid for i, iid in created if iid}
        for i, iid in invoices.items():
            s, h, b = await until_final("issue", ports, "POST", f"/invoices/{iid}/issue")
            if s != 200:
                violation(f"issue {iid}: {s} {b[:100]!r}")

        # Phase 2: the payment storm.
        async def pay(i, iid, d):
            amount = json.dumps({"amount_cents": 100 + i})
            kind = ["same", "new", "none", "event"][d % 4]
            if kind == "event":
                ev = json.dumps({"id": f"evt-{tag}-{i}", "type": "payment.received", "invoice_id": iid, "amount_cents": 100 + i})
                s, h, b = await until_final("event", ports, "POST", "/events", [ct], ev)
                ok = s == 200 or (s == 409 and b"current_state" in b)
            else:
                hs = [ct]
                if kind == "same":
                    hs.append(("Idempotency-Key", f"pay-{tag}-{i}"))
                elif kind == "new":
                    hs.append(("Idempotency-Key", f"pay-{tag}-{i}-{d}"))
                s, h, b = await until_final(f"pay-{kind}", ports, "POST", f"/invoices/{iid}/pay", hs, amount)
                ok = s == 200
            if not ok:
                violation(f"pay {iid} ({kind}): {s} {b[:160]!r}")

        await asyncio.gather(*[pay(i, iid, d) for i, iid in invoices.items() for d in range(args.dups)])
        await killer_done.wait()
        await kill_task
    finally:
        servers.stop_all()

    # Phase 3: the database against the answers.
    per_invoice = db_query(args.url, "SELECT i.id, i.status, COUNT(p.id) FROM invoices i LEFT JOIN payments p "
                                     "ON p.invoice_id = i.id WHERE i.client_id = 'storm' GROUP BY i.id, i.status")
    mine = {int(r[0]): (r[1], int(r[2])) for r in per_invoice if int(r[0]) in set(invoices.values())}
    for iid, (status, n) in mine.items():
        if status != "paid" or n != 1:
            violation(f"invoice {iid}: status {status}, {n} payment(s)")
    per_key = db_query(args.url, "SELECT COUNT(*) FROM invoices WHERE client_id = 'storm' "
                                 f"AND request_key LIKE 'create-{tag}-%'")
    if int(per_key[0][0]) != len(invoices):
        violation(f"{per_key[0][0]} invoices for {len(invoices)} create keys")
    running = db_query(args.url, "SELECT COUNT(*) FROM idem_keys WHERE state = 'running'")
    if int(running[0][0]) != 0:
        violation(f"{running[0][0]} idempotency record(s) left running after every request settled")
    stored_5xx = db_query(args.url, "SELECT COUNT(*) FROM idem_keys WHERE status >= 500")
    if int(stored_5xx[0][0]) != 0:
        violation(f"{stored_5xx[0][0]} stored 5xx record(s)")
    print("answers:")
    for k, v in sorted(stats.items(), key=str):
        print(f"  {k}: {v}")
    print(f"invoices: {len(invoices)}, checked in db: {len(mine)}")
    if violations:
        print(f"FAILED: {len(violations)} violation(s)")
        sys.exit(1)
    print("OK")


asyncio.run(main())
