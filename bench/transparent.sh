#!/usr/bin/env bash
# transparent.sh: interleaved rounds of new connections through egressd
# builds' transparent listeners, intercepted for real: in a network
# namespace of its own, iptables REDIRECTs the load generator's loopback
# connections to each build's listener in turn (egressd's own dials carry
# its mark and are left alone). docs/performance.md quotes it under "The
# third round". The layout is compare.sh's: egressd pinned to CPU 1, the
# load generator's client and server to CPU 0. Prints, per round and
# build, connections per second and what egressd paid per connection:
# CPU (from /proc/PID/stat), and with perf installed, system calls and
# context switches.
#
# usage: bench/transparent.sh [-n ROUNDS] raw|tls BIN...
# env: LOADGEN (a built loadgen), else it is built from BENCH/loadgen
#      (BENCH defaults to ../shared/bench). Needs root, ip, iptables,
#      taskset, python3.
set -euo pipefail

ROUNDS=4
while getopts n: o; do
  case $o in
    n) ROUNDS=$OPTARG ;;
    *) sed -n '2,18p' "$0"; exit 2 ;;
  esac
done
shift $((OPTIND - 1))
[[ $# -ge 2 && ($1 == raw || $1 == tls) ]] || { sed -n '2,18p' "$0"; exit 2; }
MODE=$1; shift

NS=egressd-tp$$
W=$(mktemp -d /tmp/egressd-tp.XXXXXX)
PIDS=()
cleanup() {
  kill "${PIDS[@]}" 2>/dev/null || true
  wait 2>/dev/null || true
  ip netns del "$NS" 2>/dev/null || true
  rm -rf "$W"
}
trap cleanup EXIT

source "$(dirname "$0")/loadgen.sh"

ip netns add "$NS"
in_ns() { ip netns exec "$NS" "$@"; }
in_ns ip link set lo up
P_RAW=9444 P_TLS=9443
UP=$P_TLS; [[ $MODE == raw ]] && UP=$P_RAW
# Started directly, not through in_ns: $! must be the process itself, for
# cleanup to end it (a namespace's processes outlive its deletion).
ip netns exec "$NS" taskset -c 0 "$LG" serve --raw 127.0.0.1:$P_RAW --tls 127.0.0.1:$P_TLS --quiet >"$W/serve.log" 2>&1 &
PIDS+=($!)

declare -A PID NAME
i=0
for bin in "$@"; do
  port=$((15001 + i))
  cat >"$W/c$i.yaml" <<E2
listeners:
  - {name: tp, mode: transparent, address: "127.0.0.1:$port", sni_destination: trust}
mark: 0x100
timeouts: {first_bytes: 300ms, client_hello: 5s, connect: 5s, idle: 15m}
log: {format: json}
policy:
  default: deny
  rules:
    - {name: bench, action: allow, fqdn: ["localhost"], destinations: ["127.0.0.0/8"]}
E2
  # Directly too: $! is egressd's own PID, whose CPU is read.
  ip netns exec "$NS" taskset -c 1 "$bin" run --config "$W/c$i.yaml" >"$W/c$i.log" 2>"$W/c$i.err" &
  PIDS+=($!); PID[$i]=$!; NAME[$i]="c$((i + 1))"
  echo "c$((i + 1)) = $bin"
  i=$((i + 1))
done
sleep 1

PERF=""
command -v perf >/dev/null && PERF=1
cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }
for r in $(seq "$ROUNDS"); do
  for j in $(seq 0 $((i - 1))); do
    in_ns iptables -t nat -F OUTPUT
    in_ns iptables -t nat -A OUTPUT -p tcp --dport "$UP" -m mark ! --mark 0x100 -j REDIRECT --to-ports $((15001 + j))
    c0=$(cpu "${PID[$j]}")
    if [[ -n $PERF ]]; then
      perf stat -x, -e raw_syscalls:sys_enter,context-switches -p "${PID[$j]}" -o "$W/perf" &
      pp=$!
      sleep 0.2
    fi
    out=$(in_ns taskset -c 0 "$LG" handshakes --mode "$MODE" --concurrency 64 --duration 4s --target 127.0.0.1:$UP 2>&1 | grep '^{' | tail -1)
    c1=$(cpu "${PID[$j]}")
    sc=0 cs=0
    if [[ -n $PERF ]]; then
      kill -INT "$pp"; wait "$pp" || true
      sc=$(awk -F, '/sys_enter/ {print $1}' "$W/perf"); cs=$(awk -F, '/context-switches/ {print $1}' "$W/perf")
    fi
    python3 - "${NAME[$j]}" "$out" "$((c1 - c0))" "$(getconf CLK_TCK)" "$sc" "$cs" "$PERF" <<'E3'
import json, sys
name, out, ticks, hz, sc, cs, perf = sys.argv[1:]
d = json.loads(out)
n = d["conns"]
line = "%-4s %6.0f conn/s  cpu %6.1f us/conn" % (name, d["conn_s"], int(ticks) / int(hz) / n * 1e6)
if perf:
    line += "  syscalls %.2f  ctx switches %.2f per conn" % (int(sc) / n, int(cs) / n)
print(line)
E3
  done
done
