#!/usr/bin/env python3
"""cserver benchmarks: run each scenario several times against a fresh cserverd and report medians.

Not tests: the machine is shared and noisy, so figures are medians of RUNS runs (default 5) and
the spread (min..max) is shown beside them. Every run is also written to
loadtest/results/bench-<timestamp>.csv.

Scenarios (all against 8 workers on 127.0.0.1, port 0, log in a temp dir):
  seed       cclient --threads 1000                      (connect, USER, one MSG, close): wall time
  held       cclient --threads 1000, cserverd --work-ms 3000: wall time and the sum of Pss of all
             server processes, sampled while the 1000 sessions are held open
  keepalive  cclient --threads 1000 --requests 100: transactions/s and p99, and the balance:
             requests per worker max/min from the scoreboard
  held10k    10,000 sessions (cclient --threads 100 --conns-per-thread 100), --work-ms 3000:
             wall time and the sum of Pss of all server processes while they are held

Usage: loadtest/bench.py [--runs N] [--only seed,held,keepalive,held10k]
"""

import argparse
import csv
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release")


class Server:
    """A cserverd on port 0 in a temp dir; stopped with SIGTERM."""

    def __init__(self, *extra, workers=8):
        self.dir = tempfile.TemporaryDirectory(prefix="cserver-bench-")
        d = self.dir.name
        self.proc = subprocess.Popen(
            [os.path.join(BIN, "cserverd"), "--port", "0", "--workers", str(workers),
             "--log", os.path.join(d, "log"), "--stats-file", os.path.join(d, "sb"), *extra],
            stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline().strip()
        if not line.startswith("listening on "):
            raise SystemExit(f"cserverd did not start: {line!r}")
        self.port = int(line.rsplit(":", 1)[1])
        # Wait until the 8 workers show as ready on the scoreboard.
        deadline = time.time() + 10
        while time.time() < deadline:
            st = self.status()
            if st and sum(1 for s in st["slots"] if s["state"] == "ready") == workers:
                break
            time.sleep(0.02)

    def status(self):
        out = subprocess.run([os.path.join(BIN, "cserverctl"), "status", "--json",
                              "--stats-file", os.path.join(self.dir.name, "sb")],
                             capture_output=True, text=True)
        return json.loads(out.stdout) if out.returncode == 0 else None

    def pss_kib(self):
        """Sum of Pss over the master and its children, in KiB."""
        pids = [self.proc.pid]
        kids = subprocess.run(["ps", "--ppid", str(self.proc.pid), "-o", "pid="],
                              capture_output=True, text=True).stdout.split()
        pids += [int(p) for p in kids]
        total = 0
        for pid in pids:
            try:
                with open(f"/proc/{pid}/smaps_rollup") as f:
                    for line in f:
                        if line.startswith("Pss:"):
                            total += int(line.split()[1])
            except OSError:
                pass
        return total

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=60)
        self.dir.cleanup()


def cclient(port, *args):
    out = subprocess.run([os.path.join(BIN, "cclient"), "--port", str(port), "--json", *args],
                         capture_output=True, text=True, timeout=300)
    summary = json.loads(out.stdout)
    if out.returncode != 0:
        print(f"  cclient reported a failure: {summary['errors']}", file=sys.stderr)
    return summary


def run_seed(runs, rows):
    server = Server()
    try:
        for i in range(runs):
            s = cclient(server.port, "--threads", "1000", "--user", "arijort")
            rows.append(dict(scenario="seed", run=i, wall_s=s["wall_s"], throughput_rps=s["throughput_rps"],
                             p99_us=s["latency"]["p99_us"], pss_kib="", ok=s["accounting_ok"]))
    finally:
        server.stop()



def run_held(runs, rows, sessions=1000):
    server = Server("--work-ms", "3000")
    load = ["--threads", "1000"] if sessions == 1000 else ["--threads", "100", "--conns-per-thread", str(sessions // 100)]
    name = "held" if sessions == 1000 else "held10k"
    try:
        for i in range(runs):
            peak = [0]

            def sample():
                # Sample while the sessions are held (they are answered after 3 s).
                time.sleep(1.5)
                peak[0] = server.pss_kib()

            t = threading.Thread(target=sample)
            t.start()
            s = cclient(server.port, *load)
            t.join()
            rows.append(dict(scenario=name, run=i, wall_s=s["wall_s"], throughput_rps=s["throughput_rps"],
                             p99_us=s["latency"]["p99_us"], pss_kib=peak[0], ok=s["accounting_ok"]))
    finally:
        server.stop()


def run_keepalive(runs, rows):
    server = Server()
    try:
        for i in range(runs):
            before = [x["requests"] for x in server.status()["slots"]]
            s = cclient(server.port, "--threads", "1000", "--requests", "100")
            after = [x["requests"] for x in server.status()["slots"]]
            share = [a - b for a, b in zip(after, before) if a - b > 0]
            rows.append(dict(scenario="keepalive", run=i, wall_s=s["wall_s"], throughput_rps=s["throughput_rps"],
                             p99_us=s["latency"]["p99_us"], pss_kib="", ok=s["accounting_ok"],
                             balance=max(share) / max(1, min(share))))
    finally:
        server.stop()


def spread(values, fmt):
    return f"{fmt(statistics.median(values))} (min {fmt(min(values))}, max {fmt(max(values))})"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=int(os.environ.get("RUNS", 5)))
    ap.add_argument("--only", default="seed,held,keepalive,held10k")
    args = ap.parse_args()
    rows = []
    scenarios = {"seed": run_seed, "held": run_held, "keepalive": run_keepalive,
                 "held10k": lambda runs, rows: run_held(runs, rows, 10000)}
    for name in args.only.split(","):
        print(f"running {name} x{args.runs} ...", flush=True)
        scenarios[name](args.runs, rows)

    os.makedirs(os.path.join(ROOT, "loadtest", "results"), exist_ok=True)
    path = os.path.join(ROOT, "loadtest", "results", time.strftime("bench-%Y%m%d-%H%M%S.csv"))
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["scenario", "run", "wall_s", "throughput_rps", "p99_us", "pss_kib", "ok",
                                          "balance"])
        w.writeheader()
        w.writerows(rows)

    ms = lambda v: f"{v * 1000:.0f} ms"
    print(f"\nmedians of {args.runs} runs ({os.cpu_count()} CPUs), all runs in {os.path.relpath(path, ROOT)}")
    for name in args.only.split(","):
        rs = [r for r in rows if r["scenario"] == name]
        walls = [r["wall_s"] for r in rs]
        ok = all(r["ok"] for r in rs)
        if name == "seed":
            print(f"  seed      1000 users x 1 MSG      wall {spread(walls, ms)}  accounting {'exact' if ok else 'MISMATCH'}")
        elif name in ("held", "held10k"):
            pss = [r["pss_kib"] / 1024 for r in rs]
            label = "held     " if name == "held" else "held10k  "
            n = "1000 " if name == "held" else "10000"
            print(f"  {label} {n} x --work-ms 3000  wall {spread(walls, lambda v: f'{v:.3f} s')}"
                  f"  server Pss {spread(pss, lambda v: f'{v:.1f} MiB')}  accounting {'exact' if ok else 'MISMATCH'}")
        else:
            tps = [r["throughput_rps"] for r in rs]
            p99 = [r["p99_us"] / 1000 for r in rs]
            bal = [r["balance"] for r in rs]
            print(f"  keepalive 1000 x 100 MSG          {spread(tps, lambda v: f'{v:.0f} tx/s')}"
                  f"  p99 {spread(p99, lambda v: f'{v:.1f} ms')}  balance max/min {spread(bal, lambda v: f'{v:.2f}')}"
                  f"  accounting {'exact' if ok else 'MISMATCH'}")


if __name__ == "__main__":
    main()
