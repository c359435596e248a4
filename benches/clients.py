#!/usr/bin/env python3
"""Real database clients through failoverd and HAProxy, against a direct
connection, in one run: `redis-benchmark` SET/GET against redis-server and
`pgbench -S` (persistent connections and `-C`, a new connection per
transaction) against PostgreSQL, each started here on a free loopback port
with its own data directory and stopped by PID.

    python3 benches/clients.py [--binary PATH] [--reps 3] [--seconds 5]

Needs the Debian packages redis-server (redis-benchmark), postgresql
(pgbench), haproxy. Prints a Markdown table: the median of each figure, its
ratio to direct, and failoverd's ratio over HAProxy's best ratio.
"""

from __future__ import annotations

import argparse
import glob
import os
import pwd
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Processes, ports and configs as compare.py makes them (same directory).
from compare import ROOT, failoverd_config, free_port, haproxy_config, start, stop, stop_all, wait_listen


def as_postgres() -> dict:
    """Run PostgreSQL programs as the `postgres` account when root."""
    if os.getuid() != 0:
        return {}
    pw = pwd.getpwnam("postgres")

    def demote() -> None:
        os.setgid(pw.pw_gid)
        os.setuid(pw.pw_uid)

    return {"preexec_fn": demote}


def start_postgres(tmp: Path) -> tuple[int, subprocess.Popen]:
    bins = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(p.split("/")[-2]))
    if not bins:
        raise RuntimeError("PostgreSQL is not installed (apt-get install postgresql)")
    bindir = Path(bins[-1])
    data = tmp / "pg"
    data.mkdir()
    if os.getuid() == 0:
        pw = pwd.getpwnam("postgres")
        os.chown(tmp, pw.pw_uid, pw.pw_gid)
        os.chown(data, pw.pw_uid, pw.pw_gid)
    kw = as_postgres()
    subprocess.run(
        [str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres"],
        check=True,
        capture_output=True,
        **kw,
    )
    port = free_port()
    proc = start(
        [
            str(bindir / "postgres"),
            "-D", str(data),
            "-p", str(port),
            "-k", str(tmp),
            "-c", "listen_addresses=127.0.0.1",
            "-c", "fsync=off",
            "-c", "max_connections=200",
        ],
        **kw,
    )
    wait_listen(port, proc)
    time.sleep(0.5)
    subprocess.run(
        ["pgbench", "-i", "-s", "1", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "postgres"],
        check=True,
        capture_output=True,
    )
    return port, proc


def start_redis(tmp: Path) -> tuple[int, subprocess.Popen]:
    port = free_port()
    proc = start(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(tmp)]
    )
    wait_listen(port, proc)
    return port, proc


def start_proxy(name: str, binary: Path, tmp: Path, backends: dict[str, int]) -> tuple[subprocess.Popen | None, dict]:
    """`name`: direct, fo (defaults), fo-wN, hap-nbN. Returns the process and
    the port per backend kind."""
    if name == "direct":
        return None, dict(backends)
    ports = {kind: free_port() for kind in backends}
    if name.startswith("fo"):
        cfg = tmp / f"{name}.toml"
        cfg.write_text(
            failoverd_config(
                [(kind, port, [("b", backends[kind])]) for kind, port in ports.items()],
                {"check_interval": '"1h"', "idle_timeout": '"0s"'},
            )
        )
        cmd = [str(binary), "run", "-c", str(cfg)]
        if name.startswith("fo-w"):
            cmd += ["--workers", name[4:]]
        proc = start(cmd, env=dict(os.environ, RUST_LOG="warn"))
    else:
        cfg = tmp / f"{name}.cfg"
        listens = [(kind, port, [f"server b 127.0.0.1:{backends[kind]}"]) for kind, port in ports.items()]
        cfg.write_text(haproxy_config(int(name.removeprefix("hap-nb")), listens))
        proc = start([shutil.which("haproxy") or "/usr/sbin/haproxy", "-db", "-f", str(cfg)])
    for port in ports.values():
        wait_listen(port, proc)
    time.sleep(0.3)
    return proc, ports


def redis_bench(port: int, seconds: int) -> dict[str, float]:
    # About `seconds` of work at the direct rate of this machine (~100k/s).
    n = 60_000 * seconds
    out = subprocess.run(
        ["redis-benchmark", "-h", "127.0.0.1", "-p", str(port), "-t", "set,get", "-n", str(n), "-c", "50", "-q"],
        capture_output=True, text=True, timeout=seconds * 20 + 60,
    ).stdout
    got = {}
    for test in ("SET", "GET"):
        m = re.search(rf"^{test}: ([\d.]+) requests per second", out.replace("\r", "\n"), re.M)
        if not m:
            raise RuntimeError(f"redis-benchmark printed no {test} figure: {out[-400:]}")
        got[f"redis {test}"] = float(m.group(1))
    return got


def pgbench(port: int, seconds: int, connect: bool) -> float:
    cmd = ["pgbench", "-S", "-n", "-T", str(seconds), "-c", "8", "-j", "2", "-h", "127.0.0.1", "-p", str(port),
           "-U", "postgres", "postgres"]
    if connect:
        cmd.insert(1, "-C")
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)
    m = re.search(r"^tps = ([\d.]+)", res.stdout, re.M)
    if res.returncode != 0 or not m:
        raise RuntimeError(f"pgbench failed: {res.stdout[-400:]}{res.stderr[-400:]}")
    return float(m.group(1))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--binary", default=str(ROOT / "target/release/failoverd"))
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--seconds", type=int, default=5)
    p.add_argument("--targets", default="direct,fo,fo-w1,hap-nb1,hap-nb2")
    a = p.parse_args()
    targets = a.targets.split(",")
    tmp = Path(tempfile.mkdtemp(prefix="failoverd-clients-"))
    os.chmod(tmp, 0o755)
    data: dict[str, dict[str, list[float]]] = {t: {} for t in targets}
    try:
        redis_port, _ = start_redis(tmp)
        pg_port, _ = start_postgres(tmp)
        backends = {"redis": redis_port, "pg": pg_port}
        for rep in range(a.reps):
            order = targets[rep % len(targets):] + targets[: rep % len(targets)]
            for t in order:
                print(f"[rep {rep + 1}/{a.reps}] {t}", file=sys.stderr)
                proc, ports = start_proxy(t, Path(a.binary), tmp, backends)
                try:
                    figures = redis_bench(ports["redis"], a.seconds)
                    figures["pgbench -S"] = pgbench(ports["pg"], a.seconds, connect=False)
                    figures["pgbench -S -C"] = pgbench(ports["pg"], a.seconds, connect=True)
                finally:
                    if proc:
                        stop(proc)
                for k, v in figures.items():
                    data[t].setdefault(k, []).append(v)
                time.sleep(0.3)
    finally:
        stop_all()
        shutil.rmtree(tmp, ignore_errors=True)

    metrics = list(next(iter(data.values())).keys())
    med = {t: {k: statistics.median(v) for k, v in d.items()} for t, d in data.items()}
    haps = [t for t in targets if t.startswith("hap")]
    fos = [t for t in targets if t.startswith("fo")]
    print(f"# Real clients, medians of {a.reps} runs of ~{a.seconds} s (operations or transactions per second)\n")
    print("| figure | " + " | ".join(targets) + " | " + " | ".join(f"{f} / best HAProxy (ratios to direct)" for f in fos) + " |")
    print("|---|" + "---:|" * (len(targets) + len(fos)))
    for k in metrics:
        cells = [f"{med[t][k]:.0f}" + (f" ({med[t][k] / med['direct'][k]:.2f})" if "direct" in med and t != "direct" else "")
                 for t in targets]
        best = max(med[h][k] for h in haps) if haps else None
        ratio = [f"{med[f][k] / best:.2f}" if best else "–" for f in fos]
        print(f"| {k} | " + " | ".join(cells) + " | " + " | ".join(ratio) + " |")
    return 0


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    sys.exit(main())
