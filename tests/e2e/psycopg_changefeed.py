"""A sinkless changefeed consumed row by row through psycopg 3, as CockroachDB's docs show:
`for row in cur.stream("CREATE CHANGEFEED FOR TABLE t")`.

Against a node whose table `t (id INT8 PRIMARY KEY, v STRING)` holds rows: reads the initial
scan's rows, then inserts KEY from a second connection and reads on until that row arrives,
then leaves the loop (psycopg then sends a CancelRequest and drains the statement) and checks
the connection is usable. Prints one line `summary {json}` (the rows seen, the time each
change took to arrive, whether the connection was usable after); exits 1 on any failure.
Every wait is bounded by --deadline-s (a watchdog thread cancels the statement).

Run by tests/e2e/changefeed.rs:
    /usr/bin/python3 psycopg_changefeed.py --key 100 --deadline-s 60 URL
"""

import argparse
import json
import sys
import threading
import time

import psycopg


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--key", type=int, required=True)
    parser.add_argument("--deadline-s", type=float, default=60)
    parser.add_argument("url")
    args = parser.parse_args()

    feed = psycopg.connect(args.url, autocommit=True)
    writer = psycopg.connect(args.url, autocommit=True)
    timed_out = threading.Event()

    def watchdog():
        timed_out.set()
        feed.cancel()

    timer = threading.Timer(args.deadline_s, watchdog)
    timer.start()
    seen = []
    inserted_at = None
    latency_s = None
    error = None
    try:
        cur = feed.cursor()
        for table, key, value in cur.stream("CREATE CHANGEFEED FOR TABLE t"):
            seen.append([table, key, value])
            if inserted_at is None:
                # The feed runs: a change made now must arrive while it streams.
                inserted_at = time.monotonic()
                writer.execute(
                    "INSERT INTO t VALUES (%s, %s)", (args.key, "from psycopg")
                )
            elif key == json.dumps([args.key]):
                latency_s = time.monotonic() - inserted_at
                break
    except psycopg.Error as e:
        error = f"{type(e).__name__}: {e}"
    finally:
        timer.cancel()
    usable = None
    if error is None:
        usable = feed.execute("SELECT 1").fetchone()[0] == 1
    summary = {
        "rows": seen,
        "latency_s": latency_s,
        "usable_after": usable,
        "timed_out": timed_out.is_set(),
        "error": error,
    }
    print("summary " + json.dumps(summary), flush=True)
    feed.close()
    writer.close()
    ok = error is None and latency_s is not None and usable
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
