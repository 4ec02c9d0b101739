"""Bank transfers through psycopg 3 with its standard retry loop, from several workers on
contended accounts, against an ldr cluster that already holds `bank (id, balance)`.

Each transfer runs in `with conn.transaction():` (BEGIN ... COMMIT, ROLLBACK on an error) and
is retried when it fails with 40001; odd workers use CockroachDB's retry protocol inside the
block instead (SAVEPOINT cockroach_restart, ROLLBACK TO SAVEPOINT cockroach_restart on 40001,
RELEASE SAVEPOINT cockroach_restart). Any other error (25P01, 25P02: the connection's
transaction status went wrong) counts as a failure, and so does a connection that is not idle
between transfers. Prints one line `summary {json}` with committed, retried and failed counts
and the bank's total before and after; exits 1 if anything failed or the total changed.

Run by crates/ldr-sql/tests/txn_status.rs:
    python3 psycopg_bank.py --workers 4 --transfers 25 URL [URL ...]
A load run against a live cluster (the issue's target):
    python3 psycopg_bank.py --workers 8 --transfers 1000000 --duration-s 60 --deadline-s 90 URL...
"""

import argparse
import collections
import json
import sys
import threading
import time

import psycopg
from psycopg import errors
from psycopg.pq import TransactionStatus

RESTARTS_MAX = 1000


def transfer_plain(conn, src, dst, amount):
    with conn.transaction():
        a = conn.execute("SELECT balance FROM bank WHERE id = %s", (src,)).fetchone()[0]
        b = conn.execute("SELECT balance FROM bank WHERE id = %s", (dst,)).fetchone()[0]
        conn.execute("UPDATE bank SET balance = %s WHERE id = %s", (a - amount, src))
        conn.execute("UPDATE bank SET balance = %s WHERE id = %s", (b + amount, dst))


def transfer_restart(conn, src, dst, amount, stats):
    """CockroachDB's client-side retry protocol; returns after RELEASE and COMMIT."""
    with conn.transaction():
        conn.execute("SAVEPOINT cockroach_restart")
        for _ in range(RESTARTS_MAX):
            try:
                a = conn.execute("SELECT balance FROM bank WHERE id = %s", (src,)).fetchone()[0]
                b = conn.execute("SELECT balance FROM bank WHERE id = %s", (dst,)).fetchone()[0]
                conn.execute("UPDATE bank SET balance = %s WHERE id = %s", (a - amount, src))
                conn.execute("UPDATE bank SET balance = %s WHERE id = %s", (b + amount, dst))
                conn.execute("RELEASE SAVEPOINT cockroach_restart")
                return
            except errors.SerializationFailure:
                stats["retried"] += 1
                conn.execute("ROLLBACK TO SAVEPOINT cockroach_restart")
        raise RuntimeError("transfer still conflicting after %d restarts" % RESTARTS_MAX)


def worker(w, url, args, deadline, stats, lock):
    local = collections.Counter()
    failures = collections.Counter()
    try:
        transfers(w, url, args, deadline, local, failures)
    except Exception as e:  # a worker that dies counts its failure
        failures["worker died: " + type(e).__name__] += 1
        print("worker %d died: %r" % (w, e), file=sys.stderr)
    with lock:
        stats["committed"] += local["committed"]
        stats["retried"] += local["retried"]
        stats["failures"].update(failures)


def transfers(w, url, args, deadline, local, failures):
    accounts = args.accounts
    stop = time.monotonic() + args.duration_s if args.duration_s else None
    with psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
        for i in range(args.transfers):
            if stop is not None and time.monotonic() > stop:
                break
            src = (w + i) % accounts
            dst = (src + 1 + i % (accounts - 1)) % accounts
            amount = 1 + (w * 7 + i) % 50
            while True:
                if time.monotonic() > deadline:
                    failures["deadline"] += 1
                    break
                try:
                    if w % 2 == 1:
                        transfer_restart(conn, src, dst, amount, local)
                    else:
                        transfer_plain(conn, src, dst, amount)
                    local["committed"] += 1
                    break
                except errors.SerializationFailure:
                    local["retried"] += 1
                except psycopg.Error as e:
                    failures[e.sqlstate or type(e).__name__] += 1
                    print("worker %d: %s: %s" % (w, e.sqlstate, e), file=sys.stderr)
                    break
                finally:
                    status = conn.info.transaction_status
                    if status != TransactionStatus.IDLE:
                        failures["status " + status.name] += 1
                        print("worker %d: connection %s after a transfer" % (w, status.name),
                              file=sys.stderr)


def total(url):
    with psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
        return int(conn.execute("SELECT sum(balance) FROM bank").fetchone()[0])


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--transfers", type=int, default=25)
    p.add_argument("--accounts", type=int, default=4)
    p.add_argument("--deadline-s", type=float, default=120)
    p.add_argument("--duration-s", type=float, default=0,
                   help="stop starting transfers after this long (a load run; 0: run them all)")
    p.add_argument("urls", nargs="+")
    args = p.parse_args()

    before = total(args.urls[0])
    deadline = time.monotonic() + args.deadline_s
    stats = {"committed": 0, "retried": 0, "failures": collections.Counter()}
    lock = threading.Lock()
    threads = [
        threading.Thread(target=worker, args=(w, args.urls[w % len(args.urls)], args, deadline,
                                               stats, lock))
        for w in range(args.workers)
    ]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    after = total(args.urls[0])
    summary = {
        "committed": stats["committed"],
        "retried": stats["retried"],
        "failed": sum(stats["failures"].values()),
        "failures": dict(stats["failures"]),
        "total_before": before,
        "total_after": after,
        "seconds": round(time.monotonic() - started, 2),
    }
    print("summary " + json.dumps(summary), flush=True)
    ok = summary["failed"] == 0 and before == after \
        and (args.duration_s or summary["committed"] == args.workers * args.transfers)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
