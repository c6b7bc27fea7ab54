#!/usr/bin/env python3
"""make mutants: mutation testing of the core modules with cargo-mutants.

Each group of modules is mutated with the tests that guard it (its unit tests and the
integration tests that reach it, run side by side by cargo-nextest, which stops at the first
failure). Every mutant is built and the group's tests are run against it; a mutant that no test notices is a promise without a
guard. The survivors are compared with the documented equivalents in README.md (section
"Mutation testing"): a mutant the tests cannot kill because it does not change what the program
does. Exit status 0 when every survivor is a documented equivalent, 1 otherwise.

    tools/mutants.py                 every group, every mutant (make mutants-all: hours here)
    tools/mutants.py worker log      some groups
    tools/mutants.py --changed       only mutants in lines changed since each group's last
                                     complete run (tools/mutants-base; make mutants)
    tools/mutants.py --list          the mutants, without running them

A complete run of a group (all its mutants) on a clean tree that leaves no unguarded survivor
records the group and the commit in tools/mutants-base (commit that file): the next
`--changed` run of the group starts from there.
"""

import json
import os
import re
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "target" / "mutants"
# Per group, the commit of its last complete run with no unguarded survivor: `group commit`.
BASE_FILE = ROOT / "tools" / "mutants-base"


def read_bases():
    bases = {}
    for line in BASE_FILE.read_text().splitlines():
        fields = line.split("#", 1)[0].split()
        if len(fields) == 2:
            bases[fields[0]] = fields[1]
    return bases


def write_bases(bases):
    lines = ["# group, and the commit of its last complete mutation run with no unguarded",
             "# survivor (tools/mutants.py writes it; `make mutants` starts from these)"]
    lines += [f"{g} {c}" for g, c in sorted(bases.items())]
    BASE_FILE.write_text("\n".join(lines) + "\n")

# name -> (files, test targets, test name filters). The unit tests (`--lib`) always run; only
# these targets are built for each mutant, and with filters only the tests whose names contain
# one of them run (in every target, the unit tests included).
GROUPS = {
    "framing": (["src/framing.rs"], ["properties", "protocol"], []),
    "auth": (["src/auth.rs"], ["services"], ["auth::", "pass"]),
    "report": (["src/client/report.rs"], ["multi"], ["report::", "a_server_whose_count"]),
    "log": (["src/log.rs"], ["protocol", "ack_order", "properties", "security_log", "lifecycle", "listeners"], []),
    "session": (["src/session.rs"], ["protocol", "services", "security_pass", "ack_order"], []),
    "scoreboard": (["src/scoreboard.rs"], ["process", "load"], []),
    # The worker in three parts, each with the tests that reach it: the event loop, its life
    # (signals, stop, recycling, timeouts: slower tests, so only those that drive it), and the
    # services it hosts (chat delivery, PROXY header, shell bytes).
    "worker": (["src/worker/mod.rs", "src/worker/durable.rs"], ["protocol", "drain", "ack_order", "services", "process", "security", "proxy", "timeouts", "listeners", "procman"], []),
    "worker-life": (
        ["src/worker/lifecycle.rs"],
        ["process", "drain", "timeouts", "limits", "operations", "services", "listeners", "rembash"],
        ["timeout", "slowloris", "max_requests", "out_of_descriptors", "graceful", "heartbeat",
         "sigterm", "sigquit", "reload", "accept_queue", "master_is_killed", "usr1", "sleeps",
         "planned_ends", "run_list_close", "shell_runs", "ttin_and_ttou", "at_work", "recycled",
         "every_worker_serves", "silence_is_closed"],
    ),
    "worker-services": (["src/worker/services.rs"], ["services", "interactive", "proxy", "security", "protocol", "chat", "rembash"], []),
    # Idle sessions moved at planned worker changes: the worker's side, the state and channel,
    # the master's relay.
    "handover": (
        ["src/worker/handover.rs", "src/handoff.rs", "src/master/relay.rs"],
        ["handover", "process", "lifecycle"],
        ["handoff::", "relay::", "idle_sessions", "request_at_work", "shell_goes_on",
         "takes_no_sessions", "recycled", "could_not_move", "upgrade", "typing",
         "keeps_its_protocols", "not_read_yet"],
    ),
}

# A test run of a mutant that hangs (a loop that never ends) is stopped after this long.
TIMEOUT_S = 180
# Tests run at once per mutant: they mostly wait (for a reply, a timeout, a child), so more
# than the cores; the suite's tests use their own ports and temp dirs.
TEST_THREADS = 8


def strip_position(name):
    """`src/a.rs:12:5: replace f` -> `src/a.rs: replace f` (positions move with every edit)."""
    return re.sub(r"^([^:]+):\d+:\d+:", r"\1:", name)


def documented_equivalents():
    """Mutant names (without positions) listed in README.md under "Mutation testing"."""
    text = (ROOT / "README.md").read_text()
    section = text.split("### Surviving mutants", 1)
    if len(section) < 2:
        return []
    body = section[1].split("\n## ", 1)[0].split("\n### ", 1)[0]
    return [m for m in re.findall(r"^- `([^`]+)`", body, re.M)]


def kill_left_behind(out):
    """Kills processes still running a binary built under `out` (a server whose test was
    stopped at a mutant's first failure, and that a mutant kept from exiting)."""
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            exe = os.readlink(f"/proc/{pid}/exe")
        except OSError:
            continue
        if exe.startswith(str(out) + "/"):
            try:
                os.kill(int(pid), 9)
            except OSError:
                pass


def changed_lines(name, files, base):
    """A diff of `files` since `base` (for --in-diff), or None when they did not change."""
    diff = subprocess.run(["git", "diff", base, "--", *files], cwd=ROOT, capture_output=True,
                          text=True, check=True).stdout
    if not diff.strip():
        return None
    out = OUT / name
    out.mkdir(parents=True, exist_ok=True)
    path = out / "changed.diff"
    path.write_text(diff)
    return path


def run_group(name, files, tests, filters, list_only, in_diff=None):
    # The `mutants` profile (Cargo.toml) builds without debug info: a link per mutant is faster.
    args = ["cargo", "mutants", "--no-shuffle", "--timeout", str(TIMEOUT_S), "--profile", "mutants"]
    for f in files:
        args += ["-f", f]
    if in_diff:
        args += ["--in-diff", str(in_diff)]
    if list_only:
        subprocess.run(args + ["--list"], cwd=ROOT, check=True)
        return None
    out = OUT / name
    out.mkdir(parents=True, exist_ok=True)
    # nextest runs the group's tests side by side (most of a test's time is a server's deadline
    # or timeout, not CPU) and stops at the first failure: a caught mutant costs its first
    # failing test, a missed one the group's slowest test, not the sum of every target's.
    args += ["-o", str(out), "--test-tool", "nextest", "--cargo-arg=--lib"]
    for t in tests:
        args += ["--cargo-arg=--test", f"--cargo-arg={t}"]
    # The first failure ends the run at once (tests still running are stopped), and a test
    # that hangs is stopped after a minute (.config/nextest.toml, profile `mutants`).
    args += [
        f"--cargo-test-arg=--test-threads={TEST_THREADS}",
        "--cargo-test-arg=--max-fail=1:immediate",
        "--cargo-test-arg=--profile=mutants",
    ]
    if filters:
        names = "|".join(re.escape(f) for f in filters)
        args += ["--cargo-test-arg=-E", f"--cargo-test-arg=test(/{names}/)"]
    started = time.monotonic()
    print(f"== {name}: {' '.join(files)} with --lib {' '.join(tests)} {' '.join(filters)}", flush=True)
    # Fewer generated cases than the suite's default: each mutant runs them all again.
    env = dict(os.environ, PROPTEST_CASES=os.environ.get("PROPTEST_CASES", "64"))
    # A mutant can make a server write its log without end, and a timed-out test is killed
    # before its temp dir is removed: the tests' temp dirs live under the output folder (removed
    # after the group) and no file may grow past 1 GiB (SIGXFSZ ends the writer).
    tmp = out / "tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    env["TMPDIR"] = str(tmp)
    limit = lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 30, 1 << 30))
    # One build directory for every group: the dependencies are built once, not per group.
    env["CARGO_TARGET_DIR"] = str(OUT / "build")
    # cargo-mutants exits 2 when mutants were missed, 3 on timeouts: read its outcomes instead.
    run = subprocess.run(args, cwd=ROOT, env=env, preexec_fn=limit)
    kill_left_behind(OUT)
    shutil.rmtree(tmp, ignore_errors=True)
    outcomes_file = out / "mutants.out" / "outcomes.json"
    if not outcomes_file.exists():
        if in_diff and run.returncode == 0:
            # Changed lines with nothing to mutate in them (comments, tests).
            return {"caught": [], "missed": [], "timeout": [], "unviable": [],
                    "seconds": time.monotonic() - started}
        sys.exit(f"{name}: cargo mutants ran no mutant (exit status {run.returncode}); see above")
    outcomes = json.loads(outcomes_file.read_text())
    took = time.monotonic() - started
    result = {"caught": [], "missed": [], "timeout": [], "unviable": []}
    for o in outcomes["outcomes"]:
        scenario = o["scenario"]
        if scenario == "Baseline" or "Mutant" not in scenario:
            if o["summary"] != "Success":
                sys.exit(f"{name}: the tests fail without any mutant ({o['summary']}); fix them first")
            continue
        key = {
            "CaughtMutant": "caught",
            "MissedMutant": "missed",
            "Timeout": "timeout",
            "Unviable": "unviable",
        }.get(o["summary"])
        if key is None:
            sys.exit(f"{name}: unexpected outcome {o['summary']}")
        result[key].append(scenario["Mutant"]["name"])
    result["seconds"] = took
    return result


def main():
    options = [a for a in sys.argv[1:] if a.startswith("-")]
    if any(o in ("-h", "--help") for o in options):
        print(__doc__)
        print(f"usage: {sys.argv[0]} [--list] [--changed] [GROUP...]; groups: {' '.join(GROUPS)}")
        return
    unknown_options = [o for o in options if o not in ("--list", "--changed")]
    if unknown_options:
        sys.exit(f"unknown option(s) {unknown_options}; usage: [--list] [--changed] [GROUP...]")
    list_only = "--list" in sys.argv
    changed = "--changed" in sys.argv
    wanted = [a for a in sys.argv[1:] if not a.startswith("-")] or list(GROUPS)
    unknown = [w for w in wanted if w not in GROUPS]
    if unknown:
        sys.exit(f"unknown group(s) {unknown}; groups: {' '.join(GROUPS)}")
    bases = read_bases() if BASE_FILE.exists() else {}
    if changed:
        print("mutants in the lines changed since each group's last complete run "
              "(tools/mutants-base)", flush=True)
    results = {}
    for name in wanted:
        files, tests, filters = GROUPS[name]
        in_diff = None
        if changed and name in bases:
            in_diff = changed_lines(name, files, bases[name])
            if in_diff is None:
                print(f"== {name}: no change since {bases[name]}", flush=True)
                continue
        results[name] = run_group(name, files, tests, filters, list_only, in_diff)
    if list_only:
        return 0

    equivalents = documented_equivalents()
    print()
    print(f"{'group':<12}{'mutants':>8}{'caught':>8}{'timeout':>8}{'missed':>8}{'unviable':>9}{'score':>8}{'minutes':>8}")
    totals = {"caught": 0, "missed": 0, "timeout": 0, "unviable": 0}
    survivors = []
    for name, r in results.items():
        for k in totals:
            totals[k] += len(r[k])
        viable = len(r["caught"]) + len(r["timeout"]) + len(r["missed"])
        score = (len(r["caught"]) + len(r["timeout"])) / viable if viable else 1.0
        print(
            f"{name:<12}{viable + len(r['unviable']):>8}{len(r['caught']):>8}{len(r['timeout']):>8}"
            f"{len(r['missed']):>8}{len(r['unviable']):>9}{score:>8.1%}{r['seconds'] / 60:>8.1f}"
        )
        survivors += r["missed"]
    viable = totals["caught"] + totals["timeout"] + totals["missed"]
    score = (totals["caught"] + totals["timeout"]) / viable if viable else 1.0
    print(
        f"{'all':<12}{viable + totals['unviable']:>8}{totals['caught']:>8}{totals['timeout']:>8}"
        f"{totals['missed']:>8}{totals['unviable']:>9}{score:>8.1%}"
    )
    summary = OUT / "summary.json"
    summary.write_text(json.dumps(results, indent=1))

    # A documented name covers every place it occurs in its function (positions move with
    # every edit, and the README says why for all of them).
    undocumented = [s for s in survivors if strip_position(s) not in equivalents]
    print()
    print(f"{len(survivors)} surviving, {len(survivors) - len(undocumented)} of them documented equivalents")
    for s in undocumented:
        print(f"  NOT GUARDED: {s}")
    print(f"details: {OUT}/<group>/mutants.out (diff/ and log/ for each mutant); {summary}")
    clean = not subprocess.run(["git", "status", "--porcelain", "--", "src", "tests"], cwd=ROOT,
                               capture_output=True, text=True).stdout.strip()
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                          check=True).stdout.strip()
    # A group run whole on a clean tree with only documented survivors: its new base.
    guarded = [g for g, r in results.items()
               if all(strip_position(m) in equivalents for m in r["missed"])
               and (not changed or g not in bases)]
    if clean and guarded:
        bases.update({g: head for g in guarded})
        write_bases(bases)
        print(f"complete and guarded at {head}: {' '.join(guarded)} (tools/mutants-base: commit it)")
    if undocumented:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
