#!/usr/bin/env python3
"""End-to-end benchmark: failover_proxy against a bare pingora proxy, under wrk, on loopback.

Scenarios (primary, then a healthy backup):
  bare        the bare proxy to a healthy upstream, with the same timeouts (the baseline)
  bare-untimed  the same without timeouts: what pingora's own timers cost
  healthy     failover_proxy, primary up
  no-cut      the same without the stall cut (--no-stall-cut); waits are still watched, for suspicion
  fixed       the same with no timeout learned (--fixed-timeouts): what AdaptiveTimeouts cost
  refused     primary port closed
  blackholed  primary connect hangs; connect timeout 400 ms
  slow        primary answers after 1 s; read timeout 300 ms

BENCH_SCENARIOS=bare,healthy runs only those; BENCH_PIN=1/0 pins the proxy to CPU 1 and wrk and
the upstreams to CPU 0. Prints one table (requests/s, p50, p99, errors,
non-2xx) and checks the targets. Every process it
starts is stopped when it ends. Loopback only; bounded in time.

Allocator comparison: ALLOCATORS="system=PATH,mimalloc=PATH,jemalloc=PATH" runs the healthy
scenario with each failover_proxy binary given (built with that global allocator) beside the bare
proxy, in interleaved rounds, instead of the scenarios above. BENCHMARKS.md says how the binaries
are built.
"""
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")), "release", "examples")
DURATION = int(os.environ.get("BENCH_SECONDS", "10"))
WARMUP = int(os.environ.get("BENCH_WARMUP", "2"))
CONNECTIONS = int(os.environ.get("BENCH_CONNECTIONS", "32"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "2"))
# Worker threads of both proxies (BENCH_THREADS=2 for the two-thread figures).
THREADS = os.environ.get("BENCH_THREADS", "1")
# BENCH_PIN=PROXY/OTHERS (CPU lists for taskset, e.g. 1/0): the proxy on its CPUs, wrk and the
# upstreams on the others, so that where the scheduler puts each process is the same every run.
PIN = os.environ.get("BENCH_PIN", "").split("/") if os.environ.get("BENCH_PIN") else None
if PIN is not None and (len(PIN) != 2 or not all(PIN)):
    raise SystemExit("BENCH_PIN takes two CPU lists, the proxy's and the others': e.g. 1/0")
children = []


def pinned(role, args):
    return ["taskset", "-c", PIN[0 if role == "proxy" else 1], *args] if PIN else list(args)


def spawn(args, **kw):
    p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, **kw)
    children.append(p)
    return p


def stop(p):
    if p.poll() is None:
        p.send_signal(signal.SIGINT)
        try:
            p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def cleanup(*_):
    for p in children:
        stop(p)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def upstream(*flags):
    p = spawn(pinned("other", [os.path.join(EXAMPLES, "bench_upstream"), *flags]))
    return p.stdout.readline().strip()


# The timeouts of both proxies.
TIMEOUTS = ("--connect-timeout-ms", "400", "--read-timeout-ms", "300")


def failover_cmd(primary, backup, threads, *extra):
    """failover_proxy over `primary` then `backup` on a free port, and the port."""
    port = free_port()
    return [os.path.join(EXAMPLES, "failover_proxy"), "--listen", f"127.0.0.1:{port}",
            "--peer", primary, "--peer", backup, "--selector", "ordered", *TIMEOUTS,
            "--max-attempts", "3", "--threads", threads, "--quiet", *extra], port


def bare_cmd(primary, threads, *extra):
    """The bare proxy over `primary` on a free port (`extra`: its timeouts, say), and the port."""
    port = free_port()
    return [os.path.join(EXAMPLES, "bare_proxy"), "--listen", f"127.0.0.1:{port}",
            "--peer", primary, "--threads", threads, *extra], port


def wait_listening(port, timeout=10):
    deadline = time.time() + timeout
    while time.time() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise SystemExit(f"proxy on port {port} never listened")


UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def ms(text):
    m = re.match(r"([\d.]+)(us|ms|s|m)$", text)
    return float(m.group(1)) * UNITS[m.group(2)]


def wrk(url, seconds):
    out = subprocess.run(
        pinned("other", ["wrk", "-t1", f"-c{CONNECTIONS}", f"-d{seconds}s", "--latency", "--timeout", "5s", url]),
        capture_output=True, text=True, timeout=seconds + 30,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    p50 = ms(re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1))
    p99 = ms(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1))
    errs = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    errors = sum(int(x) for x in errs.groups()) if errs else 0
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return dict(rps=rps, p50=p50, p99=p99, errors=errors, non2xx=int(non2xx.group(1)) if non2xx else 0,
                requests=requests)


def cpu_seconds(pid):
    """CPU time the process has used so far (user + system), from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run(name, cmd, port):
    proxy = spawn(pinned("proxy", cmd))
    try:
        wait_listening(port)
        url = f"http://127.0.0.1:{port}/"
        wrk(url, WARMUP)
        before = cpu_seconds(proxy.pid)
        result = wrk(url, DURATION)
        # The proxy's own CPU time per request: steadier than throughput on a shared machine,
        # where wrk and the upstream take the same cores.
        result["cpu_us"] = (cpu_seconds(proxy.pid) - before) * 1e6 / max(result.pop("requests"), 1)
        return result
    finally:
        stop(proxy)


def main():
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    if not shutil.which("wrk"):
        raise SystemExit("wrk not found: `make bench` installs it")
    backup = upstream()
    primary = upstream()
    slow = upstream("--delay-ms", "1000")
    hole = upstream("--blackhole")
    refused = f"127.0.0.1:{free_port()}"

    def failover(primary_addr, *extra):
        return failover_cmd(primary_addr, backup, THREADS, *extra)

    def bare(*extra):
        return bare_cmd(primary, THREADS, *extra)

    # The reference: bare pingora doing the same job, with the same timeouts as the crate's
    # proxy (`bare-untimed`, without them, shows what pingora's own timers cost).
    timed = TIMEOUTS
    scenarios = {
        "bare": lambda: bare(*timed),
        "bare-untimed": bare,
        "healthy": lambda: failover(primary),
        "no-cut": lambda: failover(primary, "--no-stall-cut"),
        "fixed": lambda: failover(primary, "--fixed-timeouts"),
        "refused": lambda: failover(refused),
        "blackholed": lambda: failover(hole),
        "slow": lambda: failover(slow),
    }
    allocators = os.environ.get("ALLOCATORS")
    if allocators:
        def healthy_with(binary):
            def make():
                cmd, port = failover(primary)
                return [binary, *cmd[1:]], port
            return make
        scenarios = {"bare": lambda: bare(*timed)}
        for item in allocators.split(","):
            name, binary = item.split("=", 1)
            scenarios[f"healthy ({name})"] = healthy_with(binary)
    only = os.environ.get("BENCH_SCENARIOS")
    if only:
        scenarios = {n: scenarios[n] for n in only.split(",")}
    # Rounds interleave the scenarios so that drift in the machine's speed hits all of them alike;
    # each figure is the median of its rounds (mean of two).
    results = {name: [] for name in scenarios}
    for r in range(ROUNDS):
        for name, make in scenarios.items():
            cmd, port = make()
            results[name].append(run(name, cmd, port))
            print(f"round {r + 1}/{ROUNDS} {name}: {results[name][-1]['rps']:.0f} req/s", file=sys.stderr)

    def median(rows, key):
        vals = sorted(row[key] for row in rows)
        mid = len(vals) // 2
        return vals[mid] if len(vals) % 2 else (vals[mid - 1] + vals[mid]) / 2

    table = {n: {k: median(rows, k) for k in rows[0]} for n, rows in results.items()}
    print(f"\n{CONNECTIONS} connections, {DURATION} s per run, {ROUNDS} rounds, proxy on {THREADS} thread(s)\n")
    print("| scenario | req/s | proxy CPU us/req | p50 ms | p99 ms | errors | non-2xx |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for n, t in table.items():
        print(f"| {n} | {t['rps']:.0f} | {t['cpu_us']:.1f} | {t['p50']:.2f} | {t['p99']:.2f} | {t['errors']:.0f} | {t['non2xx']:.0f} |")

    if allocators or only:
        b = table["bare"]
        print()
        for n, t in table.items():
            if n != "bare":
                # Each round's ratio to bare in the same round: drift between rounds cancels.
                paired = sorted(100 * x["rps"] / y["rps"] for x, y in zip(results[n], results["bare"]))
                print(f"{n}: {100 * t['rps'] / b['rps']:.1f}% of bare throughput "
                      f"(per round: median {statistics.median(paired):.1f}%, "
                      f"{paired[0]:.1f}-{paired[-1]:.1f}%), "
                      f"bare's CPU per request is {100 * b['cpu_us'] / t['cpu_us']:.1f}% of its own, "
                      f"p99 {t['p99'] / b['p99']:.2f}x bare")
        return
    h, b = table["healthy"], table["bare"]
    checks = [
        ("healthy >= 97% of bare throughput", h["rps"] >= 0.97 * b["rps"], f"{100 * h['rps'] / b['rps']:.1f}%"
         f" (by CPU per request: {100 * b['cpu_us'] / h['cpu_us']:.1f}%)"),
    ]
    for n in ("refused", "blackholed"):
        t = table[n]
        checks.append((f"{n} >= 90% of healthy throughput", t["rps"] >= 0.9 * h["rps"], f"{100 * t['rps'] / h['rps']:.1f}%"))
        checks.append((f"{n} p99 <= 2x healthy p99", t["p99"] <= 2 * h["p99"], f"{t['p99'] / h['p99']:.2f}x"))
    n = table["no-cut"]
    checks.append(("the stall cut costs <= 3% of throughput", h["rps"] >= 0.97 * n["rps"], f"healthy at {100 * h['rps'] / n['rps']:.1f}% of no-cut"))
    s = table["slow"]
    checks.append(("slow: zero errors for GET", s["errors"] == 0 and s["non2xx"] == 0, f"{s['errors']:.0f} errors, {s['non2xx']:.0f} non-2xx"))
    print()
    for what, ok, value in checks:
        print(f"{'PASS' if ok else 'MISS'}  {what}: {value}")


if __name__ == "__main__":
    try:
        main()
    finally:
        cleanup()
