#!/usr/bin/env python3
"""Throughput and p99 latency against concurrency, cserverd beside the physical limit.

For each number of keep-alive sessions (50 .. 10,000), a `MSG` lockstep load runs for a few
seconds against `cserverd --workers W --log FILE` and, in the same run and alternating with it,
against the `ceiling` server (a C server of the same shape doing the least possible work) when
the lab tools of `../shared/bench` are beside this checkout. The driver is `linebench` from the
same place if present, else `cclient --conns-per-thread`. Results go to
loadtest/results/sweep-<timestamp>.csv and a picture to loadtest/results/sweep-<timestamp>.svg
(and loadtest/results/sweep-latest.svg).

Besides throughput and latency each run records the servers' own CPU time per request (user +
system time of the worker processes over the run, divided by the requests answered: the fair
measure of work done when the driver shares the machine) and how evenly the workers shared the
requests (max/min, from cserverd's scoreboard and from the ceiling's exit report).

`--mode churn` measures a connection per request instead, from 16 source addresses
(`linebench --src-ips 16`): cserverd in the two-exchange form (`--form two`: greeting, the
seed's one-line `arijort:hello N`, close) or the three-exchange one (`--form three`: greeting,
`USER`, `MSG`, close); the ceiling: `MSG`, close; nginx (`--anchors nginx`): its stream module's
`return "OK\n"` with an access_log record a connection, the same worker count.

`--sync always|batch` runs cserverd with that `--sync` and the ceiling with `--sync` (one
`fdatasync` per loop turn before the turn's replies); `--anchors redis` adds Redis with
`appendfsync always` (for `--sync always`) or `everysec` (for `batch`: Redis acknowledges
before that sync, cserverd after it), driven with `SET k <n>` inline commands.

`--anchors` installs what is missing (Debian packages nginx-light / libnginx-mod-stream,
redis-server) without starting their services, and leaves out an anchor that cannot be had.

Usage: loadtest/sweep.py [--workers 2] [--duration 3] [--runs 1] [--levels 50,100,...]
                         [--mode keepalive|churn] [--form two|three]
                         [--sync none|batch|always] [--anchors redis,nginx]
"""

import argparse
import csv
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release")
SHARED_BENCH = os.path.normpath(os.path.join(ROOT, "..", "shared", "bench"))
TOOLS = os.path.join(ROOT, "target", "bench-tools")
LEVELS = [50, 100, 200, 500, 1000, 2000, 5000, 10000]


def build_tools():
    """Builds linebench and ceiling from ../shared/bench into target/bench-tools, if present."""
    if not os.path.isdir(SHARED_BENCH):
        return None
    os.makedirs(TOOLS, exist_ok=True)
    for name in ("linebench", "ceiling"):
        src = os.path.join(SHARED_BENCH, f"{name}.c")
        out = os.path.join(TOOLS, name)
        if not os.path.exists(out) or os.path.getmtime(out) < os.path.getmtime(src):
            subprocess.run(["gcc", "-O2", "-o", out, src], check=True)
    return TOOLS


def unlimited(cmd):
    """Runs cmd with the open-files limit raised to the hard limit (10,000 sessions)."""
    return ["sh", "-c", 'ulimit -n "$(ulimit -Hn)"; exec "$@"', "sh", *cmd]


def children(pid):
    """Pids whose parent is pid."""
    kids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                if int(fields[1]) == pid:
                    kids.append(int(entry))
            except (OSError, IndexError, ValueError):
                pass
    return kids


def cpu_seconds(pids):
    """User + system CPU time of the processes, in seconds."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except (OSError, IndexError, ValueError):
            pass
    return total / os.sysconf("SC_CLK_TCK")


def free_port():
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_listening(port, proc, what):
    """Until 127.0.0.1:port takes connections (or the process died)."""
    import socket
    deadline = time.time() + 20
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited with status {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"{what} did not listen on {port}")


def install(packages, binary):
    """Installs Debian packages for an anchor if `binary` is missing, without starting any
    service they bring (policy-rc.d); returns whether `binary` is there now."""
    if shutil.which(binary) or os.path.exists(binary):
        return True
    if os.geteuid() != 0:
        return False
    policy = "/usr/sbin/policy-rc.d"
    had_policy = os.path.exists(policy)
    try:
        if not had_policy:
            with open(policy, "w") as f:
                f.write("#!/bin/sh\nexit 101\n")
            os.chmod(policy, 0o755)
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "update", "-qq"], env=env, check=False)
        subprocess.run(["apt-get", "install", "-y", "-qq", *packages], env=env, check=False,
                       stdout=subprocess.DEVNULL)
    finally:
        if not had_policy and os.path.exists(policy):
            os.remove(policy)
    return bool(shutil.which(binary) or os.path.exists(binary))


class Cserverd:
    name = "cserverd"

    def __init__(self, workers, log, sync="none"):
        self.dir = tempfile.TemporaryDirectory(prefix="cserver-sweep-")
        self.proc = subprocess.Popen(
            [os.path.join(BIN, "cserverd"), "--port", "0", "--workers", str(workers), "--log", log,
             "--stats-file", os.path.join(self.dir.name, "sb"), "--sync", sync],
            stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline().strip()
        self.port = int(line.rsplit(":", 1)[1])
        time.sleep(0.3)

    def workers(self):
        return children(self.proc.pid)

    def shares(self):
        """Requests answered by each worker, from the scoreboard."""
        out = subprocess.run([os.path.join(BIN, "cserverctl"), "status", "--json", "--stats-file",
                              os.path.join(self.dir.name, "sb")], capture_output=True, text=True).stdout
        import json
        return [s["requests"] for s in json.loads(out)["slots"] if s["state"] == "ready"]

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=60)
        self.dir.cleanup()


class Ceiling:
    name = "ceiling"

    def __init__(self, workers, log, tools, sync=False):
        self.port = free_port()
        self.report = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen(unlimited(
            [os.path.join(tools, "ceiling"), "--port", str(self.port), "--workers", str(workers),
             "--log", log, "--lifetime", "3600", *(["--sync"] if sync else [])]),
            stdout=subprocess.DEVNULL, stderr=self.report)
        time.sleep(0.3)

    def workers(self):
        return children(self.proc.pid)

    def shares(self):
        """Requests answered by each worker, from its exit report (after stop)."""
        self.report.seek(0)
        return [int(w.split("=")[1]) for line in self.report for w in line.split()
                if w.startswith("requests=")]

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


class Anchor:
    """A comparison server in a temp dir of its own: no shares to report, stopped by SIGTERM."""

    def shares(self):
        return []

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


class Redis(Anchor):
    """redis-server on a free port, AOF on with `fsync` as given; one thread serves."""
    name = "redis"

    def __init__(self, workers, log, fsync):
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="cserver-sweep-redis-", dir=os.path.dirname(log))
        self.proc = subprocess.Popen(unlimited(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "yes", "--appendfsync", fsync, "--dir", self.dir,
             "--maxclients", "20000", "--daemonize", "no", "--protected-mode", "yes"]),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_listening(self.port, self.proc, "redis-server")

    def workers(self):
        return [self.proc.pid]



class Nginx(Anchor):
    """nginx's stream module: `return "OK\n"` and an access_log record per connection, as many
    workers as the others, listening with reuseport."""
    name = "nginx"
    MODULE = "/usr/lib/nginx/modules/ngx_stream_module.so"

    def __init__(self, workers, log):
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="cserver-sweep-nginx-", dir=os.path.dirname(log))
        conf = os.path.join(self.dir, "nginx.conf")
        with open(conf, "w") as f:
            f.write(f"""load_module {self.MODULE};
worker_processes {workers};
daemon off;
pid {self.dir}/nginx.pid;
error_log {self.dir}/error.log;
worker_rlimit_nofile 65536;
events {{ worker_connections 20000; }}
stream {{
    log_format basic '$remote_addr [$time_local] $status $bytes_sent';
    access_log {log} basic;
    server {{
        listen 127.0.0.1:{self.port} reuseport;
        return "OK\\n";
    }}
}}
""")
        self.proc = subprocess.Popen(unlimited(["nginx", "-c", conf, "-p", self.dir]),
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_listening(self.port, self.proc, "nginx")

    def workers(self):
        return children(self.proc.pid)



def drive(server, conns, duration, tools, mode, form="three"):
    """One measured window; returns (rps, p50_us, p99_us, completed)."""
    if tools:
        cmd = [os.path.join(tools, "linebench"), "--port", str(server.port), "--mode", mode,
               "--conns", str(conns), "--duration", str(duration), "--quiet"]
        if mode == "churn":
            cmd += ["--src-ips", "16"]
        if server.name == "cserverd":
            if mode == "churn" and form == "two":
                cmd += ["--banner", "--req", "arijort:hello %n"]
            else:
                cmd += ["--banner", "--hello", "USER arijort", "--req", "MSG hello %n"]
        elif server.name == "redis":
            cmd += ["--req", "SET k %n"]
        out = subprocess.run(unlimited(cmd), capture_output=True, text=True, timeout=duration + 120).stdout
        fields = dict(kv.split("=") for kv in out.strip().split()[1:])
        return float(fields["rps"]), int(fields["p50_us"]), int(fields["p99_us"]), int(fields["completed"])
    threads = max(1, min(conns, 4))
    cmd = [os.path.join(BIN, "cclient"), "--port", str(server.port), "--threads", str(threads),
           "--conns-per-thread", str(conns // threads), "--duration", str(duration), "--json"]
    if mode == "churn":
        cmd.append("--connect-per-request")
    import json
    s = json.loads(subprocess.run(unlimited(cmd), capture_output=True, text=True, timeout=duration + 120).stdout)
    return s["throughput_rps"], s["latency"]["p50_us"], s["latency"]["p99_us"], s["acknowledged"]


def measure(server, conns, duration, tools, mode, form="three"):
    """drive() plus the workers' CPU time per request and the max/min of their shares."""
    workers = server.workers()
    before = cpu_seconds(workers)
    rps, p50, p99, completed = drive(server, conns, duration, tools, mode, form)
    cpu = cpu_seconds(workers) - before
    shares = server.shares() if server.name == "cserverd" else None
    server.stop()
    if shares is None:
        shares = server.shares()
    # A worker that answered nothing makes the ratio infinite (the ceiling's shared listener
    # often leaves some idle).
    balance = (max(shares) / min(shares) if min(shares) else math.inf) if shares else 0
    return dict(rps=rps, p50_us=p50, p99_us=p99, cpu_us=cpu * 1e6 / max(1, completed),
                balance=balance if math.isinf(balance) else round(balance, 2))


def svg(rows, path, workers):
    """Two log-x line charts (throughput and p99 against sessions), one line per server."""
    width, height, pad = 900, 360, 60
    servers = sorted({r["server"] for r in rows})
    colors = {"cserverd": "#1f77b4", "ceiling": "#d62728"}
    levels = sorted({r["conns"] for r in rows})
    import math
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{2 * height + 40}" '
             f'font-family="sans-serif" font-size="12">',
             f'<text x="{width / 2}" y="20" text-anchor="middle" font-size="15">cserverd --workers {workers} '
             f'beside the ceiling: keep-alive MSG lockstep, medians</text>']
    for i, (key, title, unit) in enumerate([("rps", "throughput", "requests/s"), ("p99_us", "p99 latency", "ms")]):
        top = 40 + i * height
        med = {}
        for s in servers:
            for c in levels:
                vals = [r[key] for r in rows if r["server"] == s and r["conns"] == c]
                if vals:
                    med[(s, c)] = statistics.median(vals) / (1000 if key == "p99_us" else 1)
        ymax = max(med.values()) * 1.1 if med else 1
        x0, x1, y0, y1 = pad, width - pad, top + height - pad, top + 20
        lx = lambda c: x0 + (x1 - x0) * (math.log(c) - math.log(levels[0])) / max(1e-9, math.log(levels[-1]) - math.log(levels[0]))
        ly = lambda v: y0 - (y0 - y1) * v / ymax
        parts.append(f'<text x="{x0}" y="{top + 12}" font-size="13">{title} ({unit})</text>')
        parts.append(f'<line x1="{x0}" y1="{y0}" x2="{x1}" y2="{y0}" stroke="black"/>')
        parts.append(f'<line x1="{x0}" y1="{y0}" x2="{x0}" y2="{y1}" stroke="black"/>')
        for c in levels:
            parts.append(f'<text x="{lx(c)}" y="{y0 + 16}" text-anchor="middle">{c}</text>')
        for k in range(5):
            v = ymax * k / 4
            parts.append(f'<text x="{x0 - 6}" y="{ly(v) + 4}" text-anchor="end">{v:,.0f}</text>')
            parts.append(f'<line x1="{x0}" y1="{ly(v)}" x2="{x1}" y2="{ly(v)}" stroke="#ddd"/>')
        parts.append(f'<text x="{(x0 + x1) / 2}" y="{y0 + 34}" text-anchor="middle">concurrent sessions</text>')
        for j, s in enumerate(servers):
            pts = [(lx(c), ly(med[(s, c)])) for c in levels if (s, c) in med]
            path_d = " ".join(f"{'M' if n == 0 else 'L'}{x:.1f},{y:.1f}" for n, (x, y) in enumerate(pts))
            col = colors.get(s, "#555")
            parts.append(f'<path d="{path_d}" fill="none" stroke="{col}" stroke-width="2"/>')
            parts += [f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{col}"/>' for x, y in pts]
            parts.append(f'<text x="{x1 - 90}" y="{y1 + 14 * j}" fill="{col}">{s}</text>')
    parts.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(parts))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--duration", type=float, default=3)
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--levels", default=",".join(map(str, LEVELS)))
    ap.add_argument("--mode", choices=["keepalive", "churn"], default="keepalive")
    ap.add_argument("--form", choices=["two", "three"], default="three",
                    help="churn: cserverd's exchanges per connection (default three)")
    ap.add_argument("--sync", choices=["none", "batch", "always"], default="none")
    ap.add_argument("--anchors", default="", help="comma-separated: redis (with --sync), nginx (churn)")
    args = ap.parse_args()
    levels = [int(x) for x in args.levels.split(",")]
    anchors = [a for a in args.anchors.split(",") if a]
    if "redis" in anchors and (args.sync == "none" or args.mode != "keepalive"):
        sys.exit("--anchors redis compares durable acknowledgements: give --sync always|batch, keepalive")
    if "nginx" in anchors and args.mode != "churn":
        sys.exit("--anchors nginx compares a connection per request: give --mode churn")
    if "redis" in anchors and not install(["redis-server"], "redis-server"):
        print("redis-server cannot be installed here: left out", flush=True)
        anchors.remove("redis")
    if "nginx" in anchors and not install(["nginx-light", "libnginx-mod-stream"], Nginx.MODULE):
        print("nginx's stream module cannot be installed here: left out", flush=True)
        anchors.remove("nginx")
    tools = build_tools()
    print(f"driver: {'linebench' if tools else 'cclient --conns-per-thread'}; "
          f"ceiling: {'yes' if tools else 'absent (../shared/bench not beside the checkout)'}", flush=True)
    logdir = tempfile.mkdtemp(prefix="cserver-sweep-log-")
    rows = []
    try:
        for conns in levels:
            for run in range(args.runs):
                servers = [lambda: Cserverd(args.workers, os.path.join(logdir, "cserverd.log"), args.sync)]
                if tools:
                    servers.append(lambda: Ceiling(args.workers, os.path.join(logdir, "ceiling.log"), tools,
                                                   args.sync != "none"))
                if "redis" in anchors:
                    fsync = "always" if args.sync == "always" else "everysec"
                    servers.append(lambda: Redis(args.workers, os.path.join(logdir, "redis.log"), fsync))
                if "nginx" in anchors:
                    servers.append(lambda: Nginx(args.workers, os.path.join(logdir, "nginx.log")))
                for make in servers:
                    server = make()
                    try:
                        m = measure(server, conns, args.duration, tools, args.mode, args.form)
                    except BaseException:
                        server.stop()
                        raise
                    rows.append(dict(server=server.name, conns=conns, run=run, **m))
                    print(f"  {server.name:9} {conns:6} sessions: {m['rps']:10,.0f} req/s"
                          f"  p50 {m['p50_us'] / 1000:6.2f} ms  p99 {m['p99_us'] / 1000:6.2f} ms"
                          f"  cpu {m['cpu_us']:5.2f} us/req  balance {m['balance']:.2f}", flush=True)
                    for f in os.listdir(logdir):
                        path = os.path.join(logdir, f)
                        if os.path.isdir(path):
                            shutil.rmtree(path, ignore_errors=True)
                        else:
                            os.remove(path)
    finally:
        shutil.rmtree(logdir, ignore_errors=True)
    os.makedirs(os.path.join(ROOT, "loadtest", "results"), exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    kind = "sweep" if args.mode == "keepalive" else f"churn{args.form}"
    if args.sync != "none":
        kind += f"-sync{args.sync}"
    base = os.path.join(ROOT, "loadtest", "results", f"{kind}-w{args.workers}-{stamp}")
    with open(base + ".csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["server", "conns", "run", "rps", "p50_us", "p99_us", "cpu_us",
                                          "balance"])
        w.writeheader()
        w.writerows(rows)
    print(f"\n{os.path.relpath(base, ROOT)}.csv")
    if args.mode == "keepalive" and len(levels) > 1:
        svg(rows, base + ".svg", args.workers)
        shutil.copy(base + ".svg", os.path.join(ROOT, "loadtest", "results", "sweep-latest.svg"))
        print(f"{os.path.relpath(base, ROOT)}.svg and loadtest/results/sweep-latest.svg")
    others = (["ceiling"] if tools else []) + anchors
    what = f"--workers {args.workers}, {args.mode}" + (f" ({args.form} exchanges)" if args.mode == "churn" else "")
    what += f", --sync {args.sync}" if args.sync != "none" else ""
    for other in others:
        print(f"ratios cserverd / {other} (medians; per-run pairs: min..max), {what}:")
        for c in levels:
            pick = lambda s, k: [r[k] for r in rows if r["server"] == s and r["conns"] == c]
            med = lambda s, k: statistics.median(pick(s, k))
            pairs = [a / b for a, b in zip(pick("cserverd", "rps"), pick(other, "rps")) if b]
            spread = f" ({min(pairs):.2f}..{max(pairs):.2f})" if pairs else ""
            line = (f"  {c:6} sessions: throughput {med('cserverd', 'rps') / med(other, 'rps'):.2f}x{spread}"
                    f"  p99 {med('cserverd', 'p99_us') / med(other, 'p99_us'):.2f}x"
                    f"  server cpu/request {med('cserverd', 'cpu_us') / med(other, 'cpu_us'):.2f}x")
            if other == "ceiling":
                line += f"  balance max/min {med('cserverd', 'balance'):.2f} vs {med('ceiling', 'balance'):.2f}"
            print(line)


if __name__ == "__main__":
    sys.exit(main())
