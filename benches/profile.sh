#!/usr/bin/env bash
# Cost per request of failoverd and HAProxy under small request/response
# traffic, in figures that repeat on a noisy machine:
#
#   - instructions per request (valgrind --tool=callgrind, user space only:
#     the proxy's own code, its libraries and the system-call wrappers);
#   - system calls per request (strace -c -f);
#
# both under wrk keep-alive (-H "Connection: keep-alive") and new
# connections (-H "Connection: close") against nginx serving 128 bytes.
#
#   benches/profile.sh [--binary PATH] [--seconds N] [--keep]
#
# Needs valgrind, strace, wrk, nginx, haproxy (installed with apt-get when
# missing, as root). Prints a Markdown table; the callgrind outputs stay in
# the temporary directory with --keep, for `callgrind_annotate`.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
binary="$root/target/release/failoverd"
seconds=5
keep=0
while (($#)); do
    case "$1" in
        --binary) binary="$2"; shift 2 ;;
        --seconds) seconds="$2"; shift 2 ;;
        --keep) keep=1; shift ;;
        -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
        *) echo "profile.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
export PATH="$PATH:/usr/sbin:/sbin"

need=()
for pair in valgrind:valgrind strace:strace wrk:wrk nginx:nginx-light haproxy:haproxy callgrind_annotate:valgrind; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || need+=("${pair#*:}")
done
if ((${#need[@]})); then
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq --no-install-recommends "${need[@]}" >&2
fi
[[ -x "$binary" ]] || (cd "$root" && cargo build --release --quiet)

tmp="$(mktemp -d)"
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    if ((keep)); then echo "profile.sh: outputs in $tmp" >&2; else rm -rf "$tmp"; fi
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() {
    for _ in $(seq 1 300); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    echo "profile.sh: nothing listens on $1" >&2
    return 1
}

# nginx: the backend, 128 bytes.
nport="$(free_port)"
mkdir -p "$tmp/nginx/www" "$tmp/nginx/tmp"
head -c 127 /dev/zero | tr '\0' x >"$tmp/nginx/www/small.txt"
echo >>"$tmp/nginx/www/small.txt"
cat >"$tmp/nginx/nginx.conf" <<EOF
daemon off;
user root root;
worker_processes 1;
pid $tmp/nginx/nginx.pid;
error_log $tmp/nginx/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 10000000;
    client_body_temp_path $tmp/nginx/tmp/body;
    proxy_temp_path $tmp/nginx/tmp/proxy;
    fastcgi_temp_path $tmp/nginx/tmp/fastcgi;
    uwsgi_temp_path $tmp/nginx/tmp/uwsgi;
    scgi_temp_path $tmp/nginx/tmp/scgi;
    server { listen 127.0.0.1:$nport backlog=4096; root $tmp/nginx/www; }
}
EOF
nginx -p "$tmp/nginx/" -e "$tmp/nginx/error.log" -c "$tmp/nginx/nginx.conf" &
pids+=($!)
wait_port "$nport"

# One proxy at a time on $port, run under $tool; prints requests done.
run_one() { # name tool mode(ka|close) -> "requests"
    local name="$1" tool="$2" mode="$3" port dir cmd=()
    port="$(free_port)"
    dir="$tmp/$name-$tool-$mode"
    mkdir -p "$dir"
    case "$name" in
        failoverd)
            cat >"$dir/f.toml" <<EOF
[defaults]
check_interval = "1h"
idle_timeout = "0s"

[[service]]
name = "http"
listen = "127.0.0.1:$port"
  [[service.backend]]
  name = "nginx"
  address = "127.0.0.1:$nport"
EOF
            cmd=("$binary" run -c "$dir/f.toml")
            ;;
        haproxy)
            cat >"$dir/h.cfg" <<EOF
global
    nbthread 1
defaults
    mode tcp
    timeout connect 1s
    timeout client 1h
    timeout server 1h
    option splice-auto
listen http
    bind 127.0.0.1:$port
    server nginx 127.0.0.1:$nport
EOF
            cmd=(haproxy -db -f "$dir/h.cfg")
            ;;
    esac
    case "$tool" in
        callgrind) cmd=(valgrind --tool=callgrind --callgrind-out-file="$dir/callgrind.out" "${cmd[@]}") ;;
        strace) cmd=(strace -f -c -o "$dir/strace.txt" "${cmd[@]}") ;;
    esac
    if [[ "$name" == failoverd ]]; then
        RUST_LOG=warn "${cmd[@]}" >"$dir/log" 2>&1 &
    else
        "${cmd[@]}" >"$dir/log" 2>&1 &
    fi
    local pid=$!
    wait_port "$port"
    sleep 1
    local header=()
    [[ "$mode" == close ]] && header=(-H "Connection: close")
    # -c10: under valgrind the proxy is the bottleneck either way.
    wrk -t1 -c10 -d"${seconds}s" "${header[@]}" "http://127.0.0.1:$port/small.txt" >"$dir/wrk.txt"
    # Stop the proxy itself (a child of valgrind or strace, which then
    # write their summaries and exit).
    local child
    child="$(pgrep -P "$pid" || true)"
    kill -TERM "${child:-$pid}" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    # The wait_port probe is one connection, not a request.
    awk '/requests in/ {print $1}' "$dir/wrk.txt"
}

echo "| proxy | traffic | requests | instructions per request | system calls per request | top system calls per request |"
echo "|---|---|---:|---:|---:|---|"
for name in failoverd haproxy; do
    for mode in ka close; do
        n="$(run_one "$name" callgrind "$mode")"
        dir="$tmp/$name-callgrind-$mode"
        ir="$(callgrind_annotate "$dir"/callgrind.out* 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}')"
        ipr="$(python3 -c "print(f'{$ir / max($n,1):,.0f}')")"
        m="$(run_one "$name" strace "$mode")"
        sdir="$tmp/$name-strace-$mode"
        calls="$(awk '$NF=="total" {print $4}' "$sdir/strace.txt")"
        spr="$(python3 -c "print(f'{$calls / max($m,1):.2f}')")"
        top="$(awk -v m="$m" 'NR>2 && $NF!="total" && $1 !~ /^-/ { printf "%s %.2f\n", $NF, $4 / m }' "$sdir/strace.txt" | sort -k2 -nr | awk 'NR<=5 {printf "%s%s %s", (NR>1?", ":""), $1, $2}')"
        label=$([[ $mode == ka ]] && echo "keep-alive" || echo "new connection per request")
        echo "| $name | $label | $n | $ipr | $spr | $top |"
    done
done
