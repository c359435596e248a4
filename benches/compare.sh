#!/usr/bin/env bash
# failoverd vs direct vs HAProxy on loopback. Usage (from anywhere):
#
#   benches/compare.sh            # full run: 3 repetitions, 10 s per measurement
#   benches/compare.sh --quick    # CI smoke: 1 repetition, 2 s per measurement
#   benches/compare.sh --help     # every option (passed on to compare.py)
#
# Installs haproxy, iperf3, wrk, nginx with apt-get when missing (needs root),
# builds failoverd in release mode, then runs benches/compare.py, which does the
# measuring and writes benches/results/latest.md. Everything it starts is
# stopped on exit, Ctrl-C or SIGTERM.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"

install=1
build=1
for arg in "$@"; do
    case "$arg" in
        --no-install) install=0 ;;
        --no-build) build=0 ;;
        -h|--help) exec python3 "$here/compare.py" --help ;;
    esac
done

need=()
for pair in haproxy:haproxy iperf3:iperf3 wrk:wrk nginx:nginx taskset:util-linux python3:python3; do
    cmd="${pair%%:*}"
    pkg="${pair#*:}"
    if ! command -v "$cmd" >/dev/null 2>&1 && [[ ! -x "/usr/sbin/$cmd" ]]; then
        need+=("$pkg")
    fi
done
if ((${#need[@]} > 0)); then
    if ((install == 0)); then
        echo "compare.sh: missing packages: ${need[*]} (and --no-install given)" >&2
        exit 1
    fi
    if [[ $(id -u) -ne 0 ]]; then
        echo "compare.sh: missing packages: ${need[*]}; run as root or: sudo apt-get install ${need[*]}" >&2
        exit 1
    fi
    echo "compare.sh: installing ${need[*]}" >&2
    # Do not let the packages start their system services (nginx on :80,
    # haproxy, iperf3 daemon): a policy-rc.d that says "no" while installing.
    made_policy=0
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        made_policy=1
    fi
    trap '((made_policy)) && rm -f /usr/sbin/policy-rc.d' EXIT
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need[@]}" >&2
    if ((made_policy)); then
        rm -f /usr/sbin/policy-rc.d
    fi
    trap - EXIT
fi
# nginx and haproxy live in /usr/sbin, which a non-login root shell may lack.
export PATH="$PATH:/usr/sbin:/sbin"

if ((build)); then
    (cd "$root" && cargo build --release --quiet)
fi

# compare.py owns the benchmark processes and stops them itself; this trap
# only makes sure it is told to when the wrapper is interrupted.
py_pid=""
# shellcheck disable=SC2317  # called from the trap
cleanup() {
    if [[ -n "$py_pid" ]] && kill -0 "$py_pid" 2>/dev/null; then
        kill -TERM "$py_pid" 2>/dev/null || true
        wait "$py_pid" 2>/dev/null || true
    fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

args=()
for arg in "$@"; do
    case "$arg" in
        --no-install|--no-build) ;;
        *) args+=("$arg") ;;
    esac
done
python3 "$here/compare.py" --binary "$root/target/release/failoverd" "${args[@]}" &
py_pid=$!
status=0
wait "$py_pid" || status=$?
py_pid=""
exit "$status"
