#!/usr/bin/env python3
"""Throughput of failover_proxy beside bare pingora, both running at the same time.

Each round starts a bare proxy and a failover proxy over the same healthy upstream, and loads
both at once, each with its own wrk (32 connections). The two proxies share the same CPUs, so
whatever the machine does meanwhile (a noisy neighbour, a frequency change) hits both alike,
and the ratio of their throughputs is the ratio of what a request costs each. `bench/e2e.py`
runs one proxy at a time instead, and its rounds swing by 5-10 % on a shared machine.

  SBS_PROXY=healthy|fixed   the failover proxy as `bench/e2e.py` runs it (`fixed`: with
                            --fixed-timeouts, no AdaptiveTimeouts) [healthy]
  SBS_BASE=bare|healthy|fixed  what it is measured against [bare]: `SBS_BASE=fixed` measures
                            what AdaptiveTimeouts cost, and the same kind twice (an A/A run)
                            how far two identical proxies' rounds differ
  SBS_THREADS=1|2           worker threads of each proxy [1]
  SBS_PIN=PROXIES/OTHERS    taskset CPU lists: both proxies on PROXIES, wrk and the upstreams on
                            OTHERS [1/0 with one thread; none with two]
  SBS_ROUNDS, SBS_SECONDS   rounds, and seconds of load in each after 1 s of warm-up [8, 5]

Prints each round's ratio and their median. Loopback only; every process it starts is stopped
when it ends.
"""
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from e2e import (  # noqa: E402  (the one-at-a-time bench's helpers)
    EXAMPLES, TIMEOUTS, bare_cmd, failover_cmd, stop, wait_listening,
)

PROXY = os.environ.get("SBS_PROXY", "healthy")
BASE = os.environ.get("SBS_BASE", "bare")
for kind in (PROXY, BASE):
    if kind not in ("bare", "healthy", "fixed"):
        raise SystemExit(f"SBS_PROXY and SBS_BASE take bare, healthy or fixed, not {kind!r}")
THREADS = os.environ.get("SBS_THREADS", "1")
PIN = os.environ.get("SBS_PIN", "1/0" if THREADS == "1" else "")
if PIN and (len(PIN.split("/")) != 2 or not all(PIN.split("/"))):
    raise SystemExit("SBS_PIN takes two CPU lists, the proxies' and the others': e.g. 1/0")
if PIN and not shutil.which("taskset"):
    print("taskset not found (util-linux): nothing is pinned", file=sys.stderr)
    PIN = ""
ROUNDS = int(os.environ.get("SBS_ROUNDS", "8"))
SECONDS = int(os.environ.get("SBS_SECONDS", "5"))
children = []


def pinned(role, args):
    if not PIN:
        return list(args)
    cpus = PIN.split("/")[0 if role == "proxy" else 1]
    return ["taskset", "-c", cpus, *args]


def spawn(args, **kw):
    p = subprocess.Popen(args, **kw)
    children.append(p)
    return p


def upstream():
    p = spawn(pinned("other", [os.path.join(EXAMPLES, "bench_upstream")]), stdout=subprocess.PIPE, text=True)
    return p.stdout.readline().strip()


def proxy(kind, primary, backup):
    if kind == "bare":
        args, port = bare_cmd(primary, THREADS, *TIMEOUTS)
    else:
        args, port = failover_cmd(primary, backup, THREADS, *(["--fixed-timeouts"] if kind == "fixed" else []))
    p = spawn(pinned("proxy", args), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_listening(port)
    return p, port


def load(ports, seconds):
    """Requests per second of each port, loaded at the same time."""
    runs = [spawn(pinned("other", ["wrk", "-t1", "-c32", f"-d{seconds}s", "--timeout", "5s",
                                   f"http://127.0.0.1:{port}/"]), stdout=subprocess.PIPE, text=True)
            for port in ports]
    outs = [r.communicate(timeout=seconds + 30)[0] for r in runs]
    return [float(re.search(r"Requests/sec:\s+([\d.]+)", o).group(1)) for o in outs]


def main():
    primary, backup = upstream(), upstream()
    ratios = []
    print(f"{PROXY} beside {BASE}, {THREADS} thread(s) each, pinned {PIN or 'no'}, {ROUNDS} rounds of {SECONDS} s")
    for r in range(ROUNDS):
        procs = [proxy(BASE, primary, backup), proxy(PROXY, primary, backup)]
        ports = [port for _, port in procs]
        load(ports, 1)
        base, other = load(ports, SECONDS)
        for p, _ in procs:
            stop(p)
        ratios.append(100 * other / base)
        print(f"round {r + 1}: {BASE} {base:.0f} req/s, {PROXY} {other:.0f} req/s: {ratios[-1]:.1f} %", flush=True)
    print(f"\n{PROXY} / {BASE}: median {statistics.median(ratios):.1f} % "
          f"(rounds {min(ratios):.1f}-{max(ratios):.1f} %)")


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    try:
        main()
    finally:
        for c in children:
            stop(c)
