#!/usr/bin/env bash
# Three failoverd instances decide as one through etcd, on loopback:
# start etcd, two backends and three instances, stop the primary, and
# watch all three move to the backup together with one notify run.
#
#   cargo build --release && bash examples/cluster.sh
#
# Needs Debian's etcd-server (`apt-get install etcd-server`) and python3.
# Everything runs in a temp dir and is stopped on exit.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
bin=${FAILOVERD:-$root/target/release/failoverd}
etcd_bin=$(command -v etcd || echo /usr/bin/etcd)
[[ -x $bin ]] || { echo "build first: cargo build --release" >&2; exit 1; }
[[ -x $etcd_bin ]] || { echo "needs etcd: apt-get install etcd-server" >&2; exit 1; }

dir=$(mktemp -d /tmp/failoverd-cluster.XXXXXX)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$dir"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
etcd_port=$(free_port); peer_port=$(free_port)
primary_port=$(free_port); backup_port=$(free_port)

"$etcd_bin" --data-dir "$dir/etcd" --name demo \
    --listen-client-urls "http://127.0.0.1:$etcd_port" --advertise-client-urls "http://127.0.0.1:$etcd_port" \
    --listen-peer-urls "http://127.0.0.1:$peer_port" --initial-advertise-peer-urls "http://127.0.0.1:$peer_port" \
    --initial-cluster "demo=http://127.0.0.1:$peer_port" > "$dir/etcd.log" 2>&1 &
pids+=($!)
mkdir -p "$dir/primary" "$dir/backup"
echo primary > "$dir/primary/index.html"; echo backup > "$dir/backup/index.html"
python3 -m http.server "$primary_port" --bind 127.0.0.1 --directory "$dir/primary" > /dev/null 2>&1 &
primary_pid=$!; pids+=($primary_pid)
python3 -m http.server "$backup_port" --bind 127.0.0.1 --directory "$dir/backup" > /dev/null 2>&1 &
pids+=($!)
sleep 1

for i in 1 2 3; do
    listen_port=$(free_port)
    echo "$listen_port" > "$dir/px$i.port"
    cat > "$dir/px$i.toml" <<EOF
[admin]
socket = "$dir/px$i.sock"

[cluster]
name = "px$i"
etcd = ["http://127.0.0.1:$etcd_port"]
ttl  = "3s"

[[service]]
name           = "web"
listen         = "127.0.0.1:$listen_port"
check_interval = "200ms"
check_timeout  = "200ms"
hold_timeout   = "5s"
notify = ["sh", "-c", "echo \"\$0: \$FAILOVERD_FROM -> \$FAILOVERD_TO, generation \$FAILOVERD_GENERATION\" >> '$dir/switches.log'", "px$i"]

  [[service.backend]]
  name    = "primary"
  address = "127.0.0.1:$primary_port"

  [[service.backend]]
  name    = "backup"
  address = "127.0.0.1:$backup_port"
EOF
    "$bin" run -c "$dir/px$i.toml" 2> "$dir/px$i.log" &
    pids+=($!)
done

show() {
    for i in 1 2 3; do
        port=$(cat "$dir/px$i.port")
        answer=$(python3 -c 'import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1], timeout=6).read().decode().strip())' "http://127.0.0.1:$port/" 2>/dev/null || echo "no answer")
        "$bin" ctl --socket "$dir/px$i.sock" status | head -2 | sed "s/^/px$i: /"
        echo "px$i: a client got: $answer"
    done
}

sleep 3
echo "== all three instances, one decider:"
show
echo
echo "== stopping the primary backend"
kill "$primary_pid"
sleep 2
echo "== after the switch:"
show
echo
echo "== notify ran (once, on the decider):"
cat "$dir/switches.log"
