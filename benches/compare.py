#!/usr/bin/env python3
"""Compare failoverd with a direct connection and with HAProxy, on loopback.

Run it through benches/compare.sh, which installs the tools and builds the
release binary; see benches/README.md for what every figure means.

Measures, for each target (direct, failoverd splice/copy, HAProxy):
  * bulk throughput with iperf3 (1 stream, 1 stream reversed, 4 streams)
    and the proxy's CPU seconds (utime+stime) per GB forwarded;
  * HTTP request rate and p50/p99 latency with wrk to nginx, keep-alive and
    with "Connection: close" (one new connection per request);
  * RSS and fds per idle connection with N idle connections open;
and failover behaviour (failoverd vs HAProxy with a backup server): failed
client connections, time to the first connection served by the backup,
time to fail back.

Python 3 standard library only. Every process started here is stopped on
exit, on Ctrl-C and on SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import re
import resource
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

# ---------------------------------------------------------------------------
# Process bookkeeping: everything we start is in PROCS and is stopped on exit.

PROCS: list[subprocess.Popen] = []


def start(cmd: list[str], log: Path | None = None, **kw) -> subprocess.Popen:
    out = open(log, "ab") if log else subprocess.DEVNULL
    kw.setdefault("stdin", subprocess.DEVNULL)
    proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT if log else subprocess.DEVNULL, **kw)
    if log:
        out.close()
    PROCS.append(proc)
    return proc


def stop(proc: subprocess.Popen | None, sig: int = signal.SIGTERM) -> None:
    if proc is None:
        return
    if proc.poll() is None:
        try:
            proc.send_signal(sig)
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        except ProcessLookupError:
            pass
    if proc in PROCS:
        PROCS.remove(proc)


def stop_all() -> None:
    for proc in list(reversed(PROCS)):
        try:
            stop(proc)
        except Exception:  # noqa: BLE001 - best effort at exit
            pass


def on_signal(signum, _frame):
    raise SystemExit(128 + signum)


# ---------------------------------------------------------------------------
# /proc helpers


def clk_tck() -> int:
    try:
        return int(subprocess.check_output(["getconf", "CLK_TCK"], text=True).strip())
    except (OSError, ValueError, subprocess.CalledProcessError):
        return os.sysconf("SC_CLK_TCK")


CLK_TCK = clk_tck()


def cpu_seconds(pid: int) -> float:
    """utime + stime of the whole process (all threads), in seconds."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    # fields[0] is field 3 (state); utime is field 14, stime field 15.
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def listening_ports() -> set[int]:
    ports = set()
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(name).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            if parts[3] == "0A":  # TCP_LISTEN
                ports.add(int(parts[1].rsplit(":", 1)[1], 16))
    return ports


def wait_listen(
    port: int, proc: subprocess.Popen | None = None, timeout: float = 15.0, log: Path | None = None
) -> None:
    """Wait until something listens on `port`, without connecting to it (a
    probe connection would reach the backend through a proxy)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if port in listening_ports():
            return
        if proc is not None and proc.poll() is not None:
            break
        time.sleep(0.02)
    tail = log.read_text(errors="replace")[-2000:] if log and log.exists() else ""
    raise RuntimeError(f"nothing listens on port {port} (process exit {proc.poll() if proc else None})\n{tail}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_ports(n: int) -> list[int]:
    ports: list[int] = []
    while len(ports) < n:
        p = free_port()
        if p not in ports:
            ports.append(p)
    return ports


# ---------------------------------------------------------------------------
# Helper processes (this same file, run with a leading "_command")


def helper_cmd(*args: object) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), *map(str, args)]


def helper_greeter(name: str, port: int) -> None:
    """Send NAME\\n to every connection, then close it."""
    msg = (name + "\n").encode()

    async def handle(_reader, writer):
        try:
            writer.write(msg)
            await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()

    async def main():
        server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=1024, reuse_address=True)
        print("listening", flush=True)  # see start_greeter
        async with server:
            await server.serve_forever()

    asyncio.run(main())


def helper_holder(port: int) -> None:
    """Send one byte to every connection and hold it open until the peer closes."""

    async def handle(reader, writer):
        try:
            writer.write(b"h")
            await writer.drain()
            await reader.read()
        except OSError:
            pass
        finally:
            writer.close()

    async def main():
        server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=4096, reuse_address=True)
        async with server:
            await server.serve_forever()

    asyncio.run(main())


def helper_idle_client(port: int, count: int) -> None:
    """Open COUNT connections, read one byte on each (so the proxy has
    connected to the backend), print "ready OK FAILED", hold them until stdin
    closes."""
    socks = []
    failed = 0
    for _ in range(count):
        try:
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            if s.recv(1) != b"h":
                raise OSError("no greeting")
            socks.append(s)
        except OSError:
            failed += 1
    print(f"ready {len(socks)} {failed}", flush=True)
    sys.stdin.read()
    for s in socks:
        s.close()


def start_greeter(name: str, port: int, log: Path) -> subprocess.Popen:
    """Start a greeter and return once it listens. It says so on stdout, which
    is quicker and more precise than polling /proc/net/tcp (slow to read when
    earlier runs left tens of thousands of TIME_WAIT sockets)."""
    with open(log, "ab") as err:
        proc = subprocess.Popen(
            helper_cmd("_greeter", name, port), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err
        )
    PROCS.append(proc)
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], 15)
    line = proc.stdout.readline() if ready else b""
    proc.stdout.close()  # later prints would fail, but there are none
    if line.strip() != b"listening":
        raise RuntimeError(f"greeter {name} on port {port} did not start: {log.read_text(errors='replace')[-1000:]}")
    return proc


HELPERS = {
    "_greeter": lambda a: helper_greeter(a[0], int(a[1])),
    "_holder": lambda a: helper_holder(int(a[0])),
    "_idle_client": lambda a: helper_idle_client(int(a[0]), int(a[1])),
}

# ---------------------------------------------------------------------------
# Targets


@dataclass
class Target:
    name: str
    kind: str  # direct | failoverd | haproxy
    zero_copy: bool = True
    nbthread: int = 0
    cpus: str | None = None  # taskset -c list
    # failoverd `send_proxy`: its HTTP service then goes to nginx's
    # `proxy_protocol` port; iperf3 and the idle holder cannot take the
    # header, so those sections are skipped for it.
    send_proxy: str | None = None
    workers: int = 0  # failoverd `run --workers N`; 0 = its default
    doc: str = ""


TARGETS = [
    Target("direct", "direct", doc="client -> backend, no proxy"),
    Target(
        "fo-splice",
        "failoverd",
        zero_copy=True,
        doc="failoverd, zero_copy = true, default tokio runtime (2 workers here)",
    ),
    Target(
        "fo-copy", "failoverd", zero_copy=False, doc="failoverd, zero_copy = false (userspace copy), default runtime"
    ),
    Target("fo-w1", "failoverd", workers=1, doc="failoverd splice, `run --workers 1` (not pinned)"),
    Target(
        "fo-splice-1cpu",
        "failoverd",
        zero_copy=True,
        cpus="0",
        doc="failoverd splice under `taskset -c 0` (1 tokio worker)",
    ),
    Target(
        "fo-splice-pp2",
        "failoverd",
        zero_copy=True,
        send_proxy="v2",
        doc="failoverd splice with `send_proxy = \"v2\"` to nginx `listen ... proxy_protocol` (HTTP sections only)",
    ),
    Target("hap-nb1", "haproxy", nbthread=1, doc="HAProxy mode tcp, option splice-auto, nbthread 1 (not pinned)"),
    Target("hap-nb2", "haproxy", nbthread=2, doc="HAProxy mode tcp, option splice-auto, nbthread 2"),
    Target("hap-nb1-1cpu", "haproxy", nbthread=1, cpus="0", doc="HAProxy as above, nbthread 1, under `taskset -c 0`"),
]

# (numerator, denominator) pairs shown in the ratio table.
RATIOS = [
    ("fo-splice", "direct"),
    ("fo-copy", "direct"),
    ("fo-splice", "hap-nb1"),
    ("fo-w1", "hap-nb1"),
    ("fo-splice", "hap-nb2"),
    ("fo-copy", "hap-nb2"),
    ("fo-splice-1cpu", "hap-nb1-1cpu"),
    ("fo-splice-pp2", "fo-splice"),
]


@dataclass
class Backends:
    iperf: int
    http: int
    hold: int
    http_pp: int = 0  # nginx behind `proxy_protocol`


@dataclass
class Ctx:
    args: argparse.Namespace
    tmp: Path
    binary: Path
    backends: Backends | None = None
    iperf_proc: subprocess.Popen | None = None
    notes: list[str] = field(default_factory=list)
    failures: int = 0


def pinned(cmd: list[str], cpus: str | None) -> list[str]:
    return ["taskset", "-c", cpus, *cmd] if cpus else cmd


def failoverd_config(services: list[tuple[str, int, list[tuple[str, int]]]], settings: dict[str, str]) -> str:
    lines = ["[defaults]"]
    lines += [f"{k} = {v}" for k, v in settings.items()]
    for name, listen, backends in services:
        lines += ["", "[[service]]", f'name = "{name}"', f'listen = "127.0.0.1:{listen}"']
        for bname, bport in backends:
            lines += ["  [[service.backend]]", f'  name = "{bname}"', f'  address = "127.0.0.1:{bport}"']
    return "\n".join(lines) + "\n"


def haproxy_config(
    nbthread: int, listens: list[tuple[str, int, list[str]]], splice: bool = True, extra: list[str] | None = None
) -> str:
    lines = [
        "global",
        f"    nbthread {nbthread}",
        "",
        "defaults",
        "    mode tcp",
        "    timeout connect 1s",  # same as failoverd's connect_timeout
        "    timeout client 1h",  # failoverd idle_timeout default
        "    timeout server 1h",
    ]
    if splice:
        lines.append("    option splice-auto")
    lines += [f"    {e}" for e in (extra or [])]
    for name, port, servers in listens:
        lines += ["", f"listen {name}", f"    bind 127.0.0.1:{port}"]
        lines += [f"    {s}" for s in servers]
    return "\n".join(lines) + "\n"


def check_config(cmd: list[str], what: str) -> None:
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"{what} config rejected by {' '.join(cmd)}:\n{res.stdout}{res.stderr}")


class Proxy:
    """A running proxy (or none, for `direct`) with its listen ports."""

    def __init__(self, ctx: Ctx, target: Target):
        self.ctx = ctx
        self.target = target
        self.proc: subprocess.Popen | None = None
        be = ctx.backends
        assert be is not None
        if target.kind == "direct":
            self.iperf, self.http, self.hold = be.iperf, be.http, be.hold
            return
        self.iperf, self.http, self.hold = free_ports(3)
        d = ctx.tmp / target.name
        d.mkdir(exist_ok=True)
        self.log = d / "proxy.log"
        if target.kind == "failoverd":
            cfg = d / "failoverd.toml"
            http_backend = be.http_pp if target.send_proxy else be.http
            extra = {"send_proxy": f'"{target.send_proxy}"'} if target.send_proxy else {}
            cfg.write_text(
                failoverd_config(
                    [
                        ("iperf", self.iperf, [("b", be.iperf)]),
                        ("http", self.http, [("b", http_backend)]),
                        ("hold", self.hold, [("b", be.hold)]),
                    ],
                    extra
                    | {
                        # One round of checks at start-up, then none: a check
                        # connection arriving while iperf3 sets up its data
                        # streams could be taken for one. HAProxy gets no
                        # `check` either.
                        "check_interval": '"1h"',
                        "check_timeout": '"1s"',
                        "idle_timeout": '"0s"',
                        "zero_copy": "true" if target.zero_copy else "false",
                    },
                )
            )
            check_config([str(ctx.binary), "check", "-c", str(cfg)], "failoverd")
            cmd = [str(ctx.binary), "run", "-c", str(cfg)]
            if target.workers:
                cmd += ["--workers", str(target.workers)]
            env = dict(os.environ, RUST_LOG="warn")
        else:
            cfg = d / "haproxy.cfg"
            cfg.write_text(
                haproxy_config(
                    target.nbthread,
                    [
                        ("iperf", self.iperf, [f"server b 127.0.0.1:{be.iperf}"]),
                        ("http", self.http, [f"server b 127.0.0.1:{be.http}"]),
                        ("hold", self.hold, [f"server b 127.0.0.1:{be.hold}"]),
                    ],
                )
            )
            check_config(["haproxy", "-c", "-q", "-f", str(cfg)], "HAProxy")
            cmd = ["haproxy", "-db", "-f", str(cfg)]
            env = None
        self.proc = start(pinned(cmd, target.cpus), self.log, env=env)
        for port in (self.iperf, self.http, self.hold):
            wait_listen(port, self.proc, log=self.log)
        time.sleep(0.2)  # let failoverd's first round of health checks finish

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def alive(self) -> None:
        if self.proc and self.proc.poll() is not None:
            raise RuntimeError(f"{self.target.name} exited with {self.proc.returncode}; log {self.log}")

    def close(self) -> None:
        stop(self.proc)


# ---------------------------------------------------------------------------
# Shared backends: iperf3 server, nginx, idle-connection holder


def start_backends(ctx: Ctx) -> None:
    iperf, http, hold, http_pp = free_ports(4)
    ctx.backends = Backends(iperf, http, hold, http_pp)
    ensure_iperf_server(ctx)

    prefix = ctx.tmp / "nginx"
    (prefix / "www").mkdir(parents=True)
    (prefix / "tmp").mkdir()
    (prefix / "www" / "small.txt").write_bytes(b"x" * (ctx.args.http_bytes - 1) + b"\n")
    (prefix / "www" / "bulk.bin").write_bytes(os.urandom(BULK_BYTES))
    conf = prefix / "nginx.conf"
    conf.write_text(
        f"""daemon off;
user root root;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    keepalive_requests 10000000;
    keepalive_timeout 300s;
    client_body_temp_path {prefix}/tmp/body;
    proxy_temp_path {prefix}/tmp/proxy;
    fastcgi_temp_path {prefix}/tmp/fastcgi;
    uwsgi_temp_path {prefix}/tmp/uwsgi;
    scgi_temp_path {prefix}/tmp/scgi;
    server {{
        listen 127.0.0.1:{http} backlog=4096;
        root {prefix}/www;
    }}
    server {{
        listen 127.0.0.1:{http_pp} backlog=4096 proxy_protocol;
        root {prefix}/www;
    }}
}}
"""
    )
    base = ["nginx", "-p", f"{prefix}/", "-e", f"{prefix}/error.log", "-c", str(conf)]
    check_config([*base, "-t", "-q"], "nginx")
    log = ctx.tmp / "nginx.log"
    nginx = start(base, log)
    wait_listen(http, nginx, log=log)

    log = ctx.tmp / "holder.log"
    holder = start(helper_cmd("_holder", hold), log)
    wait_listen(hold, holder, log=log)


def ensure_iperf_server(ctx: Ctx) -> None:
    """(Re)start the iperf3 server if it is not running."""
    if ctx.iperf_proc is not None and ctx.iperf_proc.poll() is None:
        return
    assert ctx.backends is not None
    log = ctx.tmp / "iperf3-server.log"
    ctx.iperf_proc = start(["iperf3", "-s", "-p", str(ctx.backends.iperf)], log)
    wait_listen(ctx.backends.iperf, ctx.iperf_proc, log=log)


# ---------------------------------------------------------------------------
# Measurements. Each returns {metric: value}.

IPERF_RUNS = [("1", []), ("R", ["-R"]), ("P4", ["-P", "4"])]


def run_iperf(ctx: Ctx, proxy: Proxy, label: str, extra: list[str]) -> dict[str, float]:
    ensure_iperf_server(ctx)
    dur = ctx.args.duration
    cmd = ["iperf3", "-c", "127.0.0.1", "-p", str(proxy.iperf), "-t", str(dur), "-J", *extra]
    cpu0 = cpu_seconds(proxy.pid) if proxy.pid else None
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=dur + 60)
    cpu1 = cpu_seconds(proxy.pid) if proxy.pid else None
    proxy.alive()
    try:
        data = json.loads(res.stdout)
    except json.JSONDecodeError as e:
        raise RuntimeError(f"iperf3 {' '.join(extra)}: no JSON ({e}): {res.stdout[-500:]}{res.stderr[-500:]}") from e
    if "error" in data:
        raise RuntimeError(f"iperf3 {' '.join(extra)}: {data['error']}")
    recv = data["end"]["sum_received"]
    out = {f"thr_{label}": recv["bits_per_second"] / 1e9}
    if cpu0 is not None and cpu1 is not None and recv["bytes"] > 0:
        out[f"cpu_{label}"] = (cpu1 - cpu0) / (recv["bytes"] / 1e9)
    return out


def parse_latency(value: str, unit: str) -> float:
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]


def run_wrk(ctx: Ctx, proxy: Proxy, label: str, close: bool) -> dict[str, float]:
    a = ctx.args
    cmd = ["wrk", f"-t{a.wrk_threads}", f"-c{a.wrk_conns}", f"-d{a.duration}s", "--latency"]
    if close:
        cmd += ["-H", "Connection: close"]
    cmd.append(f"http://127.0.0.1:{proxy.http}/small.txt")
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=a.duration + 60)
    proxy.alive()
    text = res.stdout
    m = re.search(r"Requests/sec:\s+([\d.]+)", text)
    p50 = re.search(r"^\s+50%\s+([\d.]+)(us|ms|s|m)\s*$", text, re.M)
    p99 = re.search(r"^\s+99%\s+([\d.]+)(us|ms|s|m)\s*$", text, re.M)
    if res.returncode != 0 or not (m and p50 and p99):
        raise RuntimeError(f"wrk failed (exit {res.returncode}): {text[-800:]}{res.stderr[-500:]}")
    errors = 0
    se = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    if se:
        errors += sum(int(x) for x in se.groups())
    n2 = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    if n2:
        errors += int(n2.group(1))
    return {
        f"rps_{label}": float(m.group(1)),
        f"p50_{label}": parse_latency(*p50.groups()),
        f"p99_{label}": parse_latency(*p99.groups()),
        f"err_{label}": float(errors),
    }


# The file `run_bulk` fetches: large enough that the transfer, not the
# request, is what is measured.
BULK_BYTES = 16 * 1024 * 1024


def run_bulk(ctx: Ctx, proxy: Proxy) -> dict[str, float]:
    """HTTP bulk throughput: wrk fetching a 16 MiB file over 2 keep-alive
    connections, in Gbit/s (the bulk path for a target iperf3 cannot use)."""
    a = ctx.args
    cmd = ["wrk", "-t1", "-c2", f"-d{a.duration}s", f"http://127.0.0.1:{proxy.http}/bulk.bin"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=a.duration + 60)
    proxy.alive()
    m = re.search(r"Transfer/sec:\s+([\d.]+)([KMG]?B)", res.stdout)
    if res.returncode != 0 or not m:
        raise RuntimeError(f"wrk bulk failed (exit {res.returncode}): {res.stdout[-800:]}{res.stderr[-500:]}")
    scale = {"B": 1, "KB": 1024, "MB": 1024**2, "GB": 1024**3}[m.group(2)]
    return {"bulk": float(m.group(1)) * scale * 8 / 1e9}


def run_idle(ctx: Ctx, proxy: Proxy) -> dict[str, float]:
    if proxy.pid is None:
        return {}
    n = ctx.args.idle_conns
    time.sleep(0.2)
    rss0, fd0 = rss_kib(proxy.pid), fd_count(proxy.pid)
    client = subprocess.Popen(
        helper_cmd("_idle_client", proxy.hold, n),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    PROCS.append(client)
    try:
        ready, _, _ = select.select([client.stdout], [], [], 120)
        line = client.stdout.readline().split() if ready else []
        if len(line) != 3 or line[0] != "ready":
            raise RuntimeError(f"idle client did not report ready: {line}")
        ok, failed = int(line[1]), int(line[2])
        time.sleep(0.5)
        rss1, fd1 = rss_kib(proxy.pid), fd_count(proxy.pid)
        proxy.alive()
    finally:
        if client.stdin:
            client.stdin.close()
        try:
            client.wait(timeout=30)
        except subprocess.TimeoutExpired:
            client.kill()
            client.wait()
        if client.stdout:
            client.stdout.close()
        PROCS.remove(client)
    if ok == 0:
        raise RuntimeError(f"no idle connection got through ({failed} failed)")
    return {
        "rss_conn": (rss1 - rss0) / ok,
        "fd_conn": (fd1 - fd0) / ok,
        "idle_failed": float(failed),
    }


# ---------------------------------------------------------------------------
# Failover


@dataclass
class Scenario:
    name: str
    kind: str
    settings: dict[str, str] = field(default_factory=dict)  # failoverd [defaults]
    server_opts: str = ""  # haproxy server line options
    extra: list[str] = field(default_factory=list)  # haproxy defaults lines
    doc: str = ""


SCENARIOS = [
    Scenario(
        "failoverd defaults", "failoverd", doc="check_interval 500ms, fall 3, rise 2, passive_errors 3, failback auto"
    ),
    Scenario(
        "failoverd 100ms/2/2",
        "failoverd",
        settings={"check_interval": '"100ms"', "check_timeout": '"100ms"', "fall": "2", "rise": "2"},
        doc="check_interval 100ms, check_timeout 100ms, fall 2, rise 2",
    ),
    Scenario(
        "haproxy defaults",
        "haproxy",
        doc="`check` on both servers, second one `backup`; inter 2s fall 3 rise 2, retries 3",
    ),
    Scenario(
        "haproxy tuned",
        "haproxy",
        server_opts="inter 100ms fall 2 rise 2",
        extra=["option redispatch"],
        doc="`check inter 100ms fall 2 rise 2` + `option redispatch`",
    ),
]


async def failover_once(ctx: Ctx, sc: Scenario, rep: int) -> dict[str, float]:
    a = ctx.args
    pport, bport, lport = free_ports(3)
    d = ctx.tmp / f"failover-{sc.name.replace(' ', '_').replace('/', '-')}-{rep}"
    d.mkdir()
    primary = start_greeter("primary", pport, d / "primary.log")
    backup = start_greeter("backup", bport, d / "backup.log")
    log = d / "proxy.log"
    if sc.kind == "failoverd":
        cfg = d / "failoverd.toml"
        cfg.write_text(failoverd_config([("svc", lport, [("primary", pport), ("backup", bport)])], sc.settings))
        check_config([str(ctx.binary), "check", "-c", str(cfg)], "failoverd")
        proxy = start([str(ctx.binary), "run", "-c", str(cfg)], log, env=dict(os.environ, RUST_LOG="info"))
    else:
        cfg = d / "haproxy.cfg"
        opts = f" {sc.server_opts}" if sc.server_opts else ""
        servers = [
            f"server primary 127.0.0.1:{pport} check{opts}",
            f"server backup 127.0.0.1:{bport} check backup{opts}",
        ]
        cfg.write_text(haproxy_config(2, [("svc", lport, servers)], splice=False, extra=sc.extra))
        check_config(["haproxy", "-c", "-q", "-f", str(cfg)], "HAProxy")
        proxy = start(["haproxy", "-db", "-f", str(cfg)], log)
    try:
        wait_listen(lport, proxy, log=log)
        await asyncio.sleep(0.5)  # first health checks

        results: list[tuple[float, float, str]] = []  # (start, end, who)
        tasks: set[asyncio.Task] = set()
        stopping = False

        async def attempt() -> None:
            t0 = time.monotonic()
            who = "fail"
            try:
                reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", lport), a.attempt_timeout)
                try:
                    line = await asyncio.wait_for(reader.readline(), a.attempt_timeout)
                    who = line.decode(errors="replace").strip() or "fail"
                finally:
                    writer.close()
            except (TimeoutError, OSError):
                pass
            results.append((t0, time.monotonic(), who))

        async def driver() -> None:
            nxt = time.monotonic()
            while not stopping:
                task = asyncio.create_task(attempt())
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                nxt += a.interval_ms / 1000
                await asyncio.sleep(max(0.0, nxt - time.monotonic()))

        async def first(who: str, after: float, limit: float, started_after: bool = False) -> float | None:
            """End time of the first connection served by `who` that ended
            (or, with started_after, also started) after `after`."""
            deadline = time.monotonic() + limit
            while time.monotonic() < deadline:
                ends = [e for (s, e, w) in results if w == who and e > after and (s >= after or not started_after)]
                if ends:
                    return min(ends)
                await asyncio.sleep(0.005)
            return None

        drv = asyncio.create_task(driver())
        await asyncio.sleep(a.warmup)
        t_kill = time.monotonic()
        primary.kill()
        primary.wait()
        t_backup = await first("backup", t_kill, a.failover_limit)
        await asyncio.sleep(a.hold)
        primary = await asyncio.to_thread(start_greeter, "primary", pport, d / "primary.log")
        t_up = time.monotonic()
        # Only connections opened after the restart count: an older one that
        # HAProxy is still retrying against the primary proves nothing.
        t_back = await first("primary", t_up, a.failover_limit, started_after=True)
        await asyncio.sleep(0.5)
        stopping = True
        await drv
        if tasks:
            await asyncio.wait(list(tasks), timeout=2 * a.attempt_timeout + 1)
    finally:
        stop(proxy)
        stop(primary)
        stop(backup)

    before = [r for r in results if r[0] < t_kill]
    during = [r for r in results if r[0] >= t_kill]
    served = [e - s for (s, e, w) in during if w != "fail"]
    out = {
        "attempts": float(len(results)),
        "failed": float(sum(1 for r in results if r[2] == "fail")),
        "failed_before_kill": float(sum(1 for r in before if r[2] != "primary")),
        "max_ms": max(served) * 1000 if served else float("nan"),
    }
    if t_backup is not None:
        out["to_backup_ms"] = (t_backup - t_kill) * 1000
    if t_back is not None:
        out["failback_ms"] = (t_back - t_up) * 1000
    return out


# ---------------------------------------------------------------------------
# Reporting

METRICS = [
    # key, label, unit, better ("higher"/"lower"), format
    ("thr_1", "iperf3 1 stream", "Gbit/s", "higher", "{:.2f}"),
    ("thr_R", "iperf3 1 stream -R", "Gbit/s", "higher", "{:.2f}"),
    ("thr_P4", "iperf3 -P 4", "Gbit/s", "higher", "{:.2f}"),
    ("bulk", "HTTP bulk (16 MiB file, 2 conns)", "Gbit/s", "higher", "{:.2f}"),
    ("cpu_1", "proxy CPU, 1 stream", "s/GB", "lower", "{:.3f}"),
    ("cpu_R", "proxy CPU, -R", "s/GB", "lower", "{:.3f}"),
    ("cpu_P4", "proxy CPU, -P 4", "s/GB", "lower", "{:.3f}"),
    ("rps_ka", "HTTP keep-alive", "req/s", "higher", "{:.0f}"),
    ("p50_ka", "HTTP keep-alive p50", "ms", "lower", "{:.3f}"),
    ("p99_ka", "HTTP keep-alive p99", "ms", "lower", "{:.3f}"),
    ("err_ka", "HTTP keep-alive errors", "count", "lower", "{:.0f}"),
    ("rps_close", "new connections (Connection: close)", "conn/s", "higher", "{:.0f}"),
    ("p50_close", "new connections p50", "ms", "lower", "{:.3f}"),
    ("p99_close", "new connections p99", "ms", "lower", "{:.3f}"),
    ("err_close", "new connections errors", "count", "lower", "{:.0f}"),
    ("rss_conn", "RSS per idle connection", "KiB", "lower", "{:.2f}"),
    ("fd_conn", "fds per idle connection", "fds", "lower", "{:.2f}"),
    ("idle_failed", "idle connections that failed", "count", "lower", "{:.0f}"),
]
RATIO_METRICS = {
    "bulk",
    "thr_1",
    "thr_R",
    "thr_P4",
    "cpu_1",
    "cpu_R",
    "cpu_P4",
    "rps_ka",
    "p50_ka",
    "p99_ka",
    "rps_close",
    "p50_close",
    "p99_close",
    "rss_conn",
    "fd_conn",
}
# Metrics that have no meaning for the direct path (no proxy process).
PROXY_ONLY = {"cpu_1", "cpu_R", "cpu_P4", "rss_conn", "fd_conn", "idle_failed"}

FAILOVER_METRICS = [
    ("failed", "failed client connections", "{:.0f}"),
    ("to_backup_ms", "kill -> first served by backup (ms)", "{:.0f}"),
    ("failback_ms", "primary back -> first served by primary (ms)", "{:.0f}"),
    ("max_ms", "slowest served connection after the kill (ms)", "{:.0f}"),
    ("attempts", "connection attempts", "{:.0f}"),
]


def med(values: list[float]) -> float | None:
    vals = [v for v in values if v == v]  # drop NaN
    return statistics.median(vals) if vals else None


def fmt(value: float | None, spec: str) -> str:
    return "–" if value is None else spec.format(value)


def tool_version(cmd: list[str]) -> str:
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
        text = (res.stdout + res.stderr).strip().splitlines()
        return text[0] if text else "?"
    except (OSError, subprocess.TimeoutExpired):
        return "missing"


def report(ctx: Ctx, targets: list[Target], data: dict, fo: dict, started: float) -> str:
    a = ctx.args
    try:
        rev = subprocess.run(
            ["git", "-C", str(ROOT), "describe", "--always", "--dirty"], capture_output=True, text=True
        ).stdout.strip()
    except OSError:
        rev = "?"
    cpu_model = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu_model = line.split(":", 1)[1].strip()
            break
    out = [
        "# failoverd benchmark: compare",
        "",
        f"- date: {datetime.datetime.now(datetime.UTC).strftime('%Y-%m-%d %H:%M UTC')}, "
        f"wall time {time.monotonic() - started:.0f} s",
        f"- mode: {'quick (CI smoke)' if a.quick else 'full'}; {a.reps} repetition(s), medians shown; "
        f"{a.duration} s per iperf3/wrk run; {a.idle_conns} idle connections; wrk -t{a.wrk_threads} -c{a.wrk_conns}, "
        f"{a.http_bytes}-byte file",
        f"- failoverd {rev}; {tool_version(['haproxy', '-v'])}; {tool_version(['iperf3', '--version'])}; "
        f"{tool_version(['nginx', '-v'])}; {tool_version(['wrk', '--version']).split(' Copyright')[0]}",
        f"- kernel {platform.release()}, {os.cpu_count()} CPUs ({cpu_model}), `ulimit -n` {resource_nofile()}",
        "",
    ]
    if data:
        out += ["## Targets", ""] + [f"- `{t.name}`: {t.doc}" for t in targets]
        out += ["", "## Absolute figures (median)", ""]
        out.append("| metric | unit | better | " + " | ".join(t.name for t in targets) + " |")
        out.append("|---|---|---|" + "---:|" * len(targets))
        for key, label, unit, better, spec in METRICS:
            cells = [fmt(med(data.get(t.name, {}).get(key, [])), spec) for t in targets]
            if all(c == "–" for c in cells):
                continue
            out.append(f"| {label} | {unit} | {better} | " + " | ".join(cells) + " |")
        pairs = [(x, y) for (x, y) in RATIOS if x in data and y in data]
        # failoverd at its defaults against HAProxy at its best thread count
        # in this run (the better of the HAProxy targets, metric by metric).
        haps = [t.name for t in targets if t.kind == "haproxy" and t.name in data]
        best_col = "fo-splice" in data and len(haps) > 1
        rows = []
        if pairs or best_col:
            for key, label, _unit, better, _spec in METRICS:
                if key not in RATIO_METRICS:
                    continue
                cells = []
                for x, y in pairs:
                    vx, vy = med(data[x].get(key, [])), med(data[y].get(key, []))
                    cells.append("–" if vx is None or not vy else f"{vx / vy:.2f}")
                if best_col:
                    vals = [v for v in (med(data[h].get(key, [])) for h in haps) if v]
                    vx = med(data["fo-splice"].get(key, []))
                    best = (max if better == "higher" else min)(vals) if vals else None
                    cells.append("–" if vx is None or not best else f"{vx / best:.2f}")
                if all(c == "–" for c in cells):
                    continue
                rows.append(f"| {label} | " + " | ".join(cells) + " |")
        if rows:
            out += ["", "## Ratios (median / median; > 1 is better for rates, < 1 for CPU, latency, memory)", ""]
            heads = [f"{x} / {y}" for x, y in pairs] + (["fo-splice / best HAProxy"] if best_col else [])
            out.append("| metric | " + " | ".join(heads) + " |")
            out.append("|---|" + "---:|" * len(heads))
            out += rows
    if fo:
        out += [
            "",
            f"## Failover (median; a connection every {a.interval_ms} ms, primary killed with SIGKILL, "
            f"restarted after the backup served for {a.hold} s)",
            "",
        ]
        names = list(fo)
        out.append("| metric | " + " | ".join(names) + " |")
        out.append("|---|" + "---:|" * len(names))
        for key, label, spec in FAILOVER_METRICS:
            out.append(f"| {label} | " + " | ".join(fmt(med(fo[n].get(key, [])), spec) for n in names) + " |")
        out += [""] + [f"- `{s.name}`: {s.doc}" for s in SCENARIOS if s.name in fo]
    if ctx.notes:
        out += ["", "## Notes and errors", ""] + [f"- {n}" for n in ctx.notes]
    return "\n".join(out) + "\n"


def resource_nofile() -> str:
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return str(soft)


# ---------------------------------------------------------------------------


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="failoverd vs direct vs HAProxy on loopback (see benches/README.md)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--quick", action="store_true", help="CI smoke mode: 1 repetition, 2 s runs, short failover holds")
    p.add_argument("--reps", type=int, help="repetitions per measurement (default 3; 1 with --quick)")
    p.add_argument("--duration", type=int, help="seconds per iperf3/wrk run (default 10; 2 with --quick)")
    p.add_argument("--binary", type=Path, default=ROOT / "target" / "release" / "failoverd", help="failoverd binary")
    p.add_argument("--targets", default=",".join(t.name for t in TARGETS), help="comma-separated targets")
    p.add_argument("--sections", default="throughput,http,idle,failover", help="comma-separated sections")
    p.add_argument("--scenarios", default="all", help="failover scenarios, comma-separated names or 'all'")
    p.add_argument("--idle-conns", type=int, default=5000, help="idle connections for the RSS figure")
    p.add_argument("--wrk-threads", type=int, default=2)
    p.add_argument("--wrk-conns", type=int, default=50)
    p.add_argument("--http-bytes", type=int, default=1024, help="size of the file nginx serves")
    p.add_argument("--interval-ms", type=int, default=20, help="failover: ms between client connections")
    p.add_argument(
        "--attempt-timeout", type=float, default=5.0, help="failover: a connection not greeted this long fails"
    )
    p.add_argument("--warmup", type=float, help="failover: seconds of traffic before the kill (default 2; 1 quick)")
    p.add_argument("--hold", type=float, help="failover: seconds on the backup before the restart (default 3; 1 quick)")
    p.add_argument(
        "--failover-limit", type=float, default=30.0, help="failover: give up waiting for a switch after this"
    )
    p.add_argument("--out", type=Path, default=HERE / "results" / "latest.md", help="Markdown results file")
    p.add_argument("--keep-tmp", action="store_true", help="keep the temp dir (configs, logs)")
    a = p.parse_args(argv)
    a.reps = a.reps or (1 if a.quick else 3)
    a.duration = a.duration or (2 if a.quick else 10)
    a.warmup = a.warmup if a.warmup is not None else (1.0 if a.quick else 2.0)
    a.hold = a.hold if a.hold is not None else (1.0 if a.quick else 3.0)
    return a


def estimate_seconds(a: argparse.Namespace, n_targets: int, sections: set[str], n_scen: int) -> float:
    per = 1.0
    if "throughput" in sections:
        per += 3 * (a.duration + 1.5)
    if "http" in sections:
        per += 2 * (a.duration + 0.5)
    if "idle" in sections:
        per += 3.0
    total = per * n_targets
    if "failover" in sections:
        total += n_scen * (a.warmup + a.hold + 10)
    return total * a.reps


def main(argv: list[str]) -> int:
    if argv and argv[0] in HELPERS:
        HELPERS[argv[0]](argv[1:])
        return 0
    a = parse_args(argv)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, on_signal)
    started = time.monotonic()
    names = [n for n in a.targets.split(",") if n]
    unknown = set(names) - {t.name for t in TARGETS}
    if unknown:
        print(f"unknown targets: {', '.join(sorted(unknown))}", file=sys.stderr)
        return 2
    targets = [t for t in TARGETS if t.name in names]
    sections = {s for s in a.sections.split(",") if s}
    scenarios = SCENARIOS if a.scenarios == "all" else [s for s in SCENARIOS if s.name in a.scenarios.split(",")]
    tools = ["iperf3", "wrk", "nginx", "haproxy", "taskset"]
    missing = [t for t in tools if not shutil.which(t)]
    if missing:
        print(f"missing tools: {', '.join(missing)} (benches/compare.sh installs them)", file=sys.stderr)
        return 1
    if not a.binary.exists():
        print(f"no failoverd binary at {a.binary}: cargo build --release", file=sys.stderr)
        return 1

    tmp = Path(tempfile.mkdtemp(prefix="failoverd-compare-"))
    ctx = Ctx(a, tmp, a.binary.resolve())
    data: dict[str, dict[str, list[float]]] = {}
    fo: dict[str, dict[str, list[float]]] = {}
    est = estimate_seconds(a, len(targets), sections, len(scenarios))
    print(f"compare: {len(targets)} targets, {a.reps} rep(s), ~{est / 60:.1f} min; temp dir {tmp}", file=sys.stderr)
    failures = 0
    try:
        run(ctx, targets, sections, scenarios, data, fo)
    except (KeyboardInterrupt, SystemExit) as e:
        ctx.notes.append(f"interrupted ({e!r}): partial results")
        failures += 1
    finally:
        stop_all()
        text = report(ctx, targets, data, fo, started)
        print(text)
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(text)
        print(f"compare: results written to {a.out}", file=sys.stderr)
        if a.keep_tmp:
            print(f"compare: temp dir kept: {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    failures += ctx.failures
    return 1 if failures else 0


def run(ctx: Ctx, targets: list[Target], sections: set[str], scenarios: list[Scenario], data: dict, fo: dict) -> None:
    """Every measurement; results go into `data` and `fo` as they come, so
    an interrupted run still reports what it has."""
    a = ctx.args
    if sections & {"throughput", "http", "idle"}:
        start_backends(ctx)
    for rep in range(a.reps):
        # Rotate the order so slow drift (thermal, other load) does not
        # always hit the same target.
        order = targets[rep % len(targets) :] + targets[: rep % len(targets)] if targets else []
        for t in order:
            if not sections & {"throughput", "http", "idle"}:
                break
            row = data.setdefault(t.name, {})
            print(f"[rep {rep + 1}/{a.reps}] {t.name}", file=sys.stderr)
            try:
                proxy = Proxy(ctx, t)
            except Exception as e:  # noqa: BLE001
                ctx.failures += 1
                ctx.notes.append(f"rep {rep + 1} {t.name}: start failed: {e}")
                continue
            steps = []
            if "idle" in sections and t.kind != "direct" and not t.send_proxy:
                steps.append(("idle", lambda p=proxy: run_idle(ctx, p)))
            if "throughput" in sections:
                steps.append(("http bulk", lambda p=proxy: run_bulk(ctx, p)))
            if "throughput" in sections and not t.send_proxy:
                steps += [
                    (f"iperf3 {lab}", lambda p=proxy, lab=lab, ex=ex: run_iperf(ctx, p, lab, ex))
                    for lab, ex in IPERF_RUNS
                ]
            if "http" in sections:
                steps.append(("wrk keep-alive", lambda p=proxy: run_wrk(ctx, p, "ka", close=False)))
                steps.append(("wrk close", lambda p=proxy: run_wrk(ctx, p, "close", close=True)))
            try:
                for label, fn in steps:
                    try:
                        for k, v in fn().items():
                            row.setdefault(k, []).append(v)
                    except Exception as e:  # noqa: BLE001
                        ctx.failures += 1
                        ctx.notes.append(f"rep {rep + 1} {t.name} {label}: {e}".strip().replace("\n", " / ")[:600])
                        print(f"  {label} failed: {e}", file=sys.stderr)
            finally:
                proxy.close()
            time.sleep(0.5)
        if "failover" in sections:
            for sc in scenarios:
                print(f"[rep {rep + 1}/{a.reps}] failover: {sc.name}", file=sys.stderr)
                try:
                    res = asyncio.run(failover_once(ctx, sc, rep))
                    for k, v in res.items():
                        fo.setdefault(sc.name, {}).setdefault(k, []).append(v)
                    if res.get("failed_before_kill"):
                        ctx.notes.append(
                            f"rep {rep + 1} failover {sc.name}: {res['failed_before_kill']:.0f} connections "
                            "not served by the primary before the kill"
                        )
                    if "to_backup_ms" not in res or "failback_ms" not in res:
                        ctx.failures += 1
                        ctx.notes.append(f"rep {rep + 1} failover {sc.name}: no switch within {a.failover_limit} s")
                except Exception as e:  # noqa: BLE001
                    ctx.failures += 1
                    traceback.print_exc()
                    ctx.notes.append(f"rep {rep + 1} failover {sc.name}: {e}".replace("\n", " / ")[:600])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
