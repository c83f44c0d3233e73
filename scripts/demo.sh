#!/usr/bin/env bash
# The demo: a "container" namespace gets its network from netstack, and real traffic
# goes through it — ping, HTTP, a 64 MiB download and iperf3 both ways — to servers
# this script starts in its own "host" namespace; then the service directory: two
# containers found by name (netstackd, netstack-run). Nothing leaves the machine.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

tag=$$
HOST=demo-host-$tag GUEST=demo-guest-$tag
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  ip netns del "$GUEST" 2>/dev/null || true
  ip netns del "$HOST" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
ip netns add "$HOST"; ip netns add "$GUEST"
ip -n "$HOST" link set lo up

say "starting netstack in the host namespace, attached to $GUEST"
exec 3> "$work/ready"
t0=$(date +%s%N)
ip netns exec "$HOST" .venv/bin/netstack -c -6 -r 3 --netns-type=path "/run/netns/$GUEST" tap0 \
  > "$work/netstack.log" 2>&1 &
pids+=($!)
exec 3>&-
for _ in $(seq 100); do [ -s "$work/ready" ] && break; sleep 0.05; done
[ -s "$work/ready" ] || { cat "$work/netstack.log"; echo "netstack did not become ready"; exit 1; }
echo "ready after $(( ($(date +%s%N) - t0) / 1000000 )) ms"

say "inside the container"
ip -n "$GUEST" addr show tap0 | grep -E "inet|link/ether"
ip -n "$GUEST" route
ip -n "$GUEST" -6 route | grep default

say "ping the gateway (10.0.2.2)"
ip netns exec "$GUEST" ping -c 3 10.0.2.2

say "HTTP from the host's loopback, reached as 10.0.2.2"
head -c $((64 << 20)) /dev/urandom > "$work/blob"
ip netns exec "$HOST" .venv/bin/python -m http.server 8080 --bind 127.0.0.1 --directory "$work" \
  >/dev/null 2>&1 &
pids+=($!)
sleep 0.5
ip netns exec "$GUEST" curl -sS -o /dev/null \
  -w 'downloaded %{size_download} bytes at %{speed_download} bytes/s, HTTP %{http_code}\n' \
  http://10.0.2.2:8080/blob
want=$(sha256sum < "$work/blob" | cut -d' ' -f1)
got=$(ip netns exec "$GUEST" curl -sS http://10.0.2.2:8080/blob | sha256sum | cut -d' ' -f1)
[ "$want" = "$got" ] && echo "sha256 matches: $got" || { echo "sha256 MISMATCH"; exit 1; }

say "IPv6: the host's [::1] reached as [fd00::2]"
ip netns exec "$HOST" .venv/bin/python -m http.server 8081 --bind ::1 --directory "$work" \
  >/dev/null 2>&1 &
pids+=($!)
sleep 0.5
ip netns exec "$GUEST" ping -6 -c 2 fd00::2 | tail -2
ip netns exec "$GUEST" curl -sS -o /dev/null \
  -w 'downloaded %{size_download} bytes over IPv6 at %{speed_download} bytes/s, HTTP %{http_code}\n' \
  'http://[fd00::2]:8081/blob'

say "iperf3, container -> host and host -> container (5 s each)"
ip netns exec "$HOST" iperf3 -s -B 127.0.0.1 >/dev/null 2>&1 &
pids+=($!)
sleep 0.5
ip netns exec "$GUEST" iperf3 -c 10.0.2.2 -t 5 | grep -E "sender|receiver"
ip netns exec "$GUEST" iperf3 -c 10.0.2.2 -t 5 -R | grep -E "sender|receiver"

say "the service directory: containers find each other by name, host socket to host socket"
ip netns exec "$HOST" .venv/bin/netstackd --socket "$work/netstackd.sock" > "$work/netstackd.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do [ -S "$work/netstackd.sock" ] && break; sleep 0.05; done
run() { ip netns exec "$HOST" .venv/bin/netstack-run --directory "$work/netstackd.sock" "$@"; }
ip netns exec "$HOST" .venv/bin/netstack-run --directory "$work/netstackd.sock" --name web -- \
  .venv/bin/python -m http.server 8080 --directory "$work" >/dev/null 2>&1 &
pids+=($!)
ip netns exec "$HOST" .venv/bin/netstack-run --directory "$work/netstackd.sock" --name iperf -- \
  iperf3 -s >/dev/null 2>&1 &
pids+=($!)
for _ in $(seq 100); do
  [ "$(.venv/bin/netstackctl -d "$work/netstackd.sock" services | grep -c '^web \|^iperf ')" = 2 ] && break
  sleep 0.1
done
.venv/bin/netstackctl -d "$work/netstackd.sock" services
.venv/bin/netstackctl -d "$work/netstackd.sock" instances
got=$(run -- curl -sS http://web:8080/blob | sha256sum | cut -d' ' -f1)
[ "$want" = "$got" ] && echo "by name, http://web:8080/blob: sha256 matches" \
  || { echo "sha256 MISMATCH by name"; exit 1; }
run -- curl -sS -o /dev/null \
  -w 'http://web.netstack.internal:8080/blob: %{size_download} bytes at %{speed_download} bytes/s\n' \
  http://web.netstack.internal:8080/blob
echo "iperf3 to the container named iperf (3 s), then host loopback for comparison:"
run -- iperf3 -c iperf -t 3 | grep -E "receiver"
ip netns exec "$HOST" iperf3 -c 127.0.0.1 -p 5201 -t 3 -B 127.0.0.1 2>/dev/null | grep -E "receiver" || true

say "netstack's log"
cat "$work/netstack.log"
