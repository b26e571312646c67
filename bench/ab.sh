#!/usr/bin/env bash
# ab.sh: interleaved A/B rounds of one load scenario through egressd builds,
# with HAProxy and nginx beside them as yardsticks.
#
# compare.sh (the peer benchmark we are handed) runs every scenario once per
# rep, minutes apart; on a noisy machine that cannot tell a 5 % change from
# the weather. This script runs one scenario round-robin over the systems,
# so that each round compares them within seconds, and prints for every
# round and system the scenario's own figure and what the proxy paid for
# it: CPU split into user and system time (from /proc/PID/stat), context
# switches, and the wake-up interrupts its CPU received (/proc/interrupts;
# they include other work on that CPU), per unit of work.
# docs/performance.md quotes its output as
# "interleaved rounds". The layout is compare.sh's: the proxy pinned to
# CPU 1, the load generator's client and server to CPU 0.
#
# usage: bench/ab.sh [-n ROUNDS] [-p PEERS] SCENARIO BIN...
#   SCENARIO  handshakes-raw, handshakes-tls (c=64, 4 s; unit: connection)
#             latency (20,000 64 B echoes; unit: echo)
#             download-raw, upload-raw, download-tls, upload-tls
#             (one stream, BYTES each, default 2G; unit: GB)
#             both-raw, both-tls (compare.sh's order: one stream downloads
#             BYTES, then uploads BYTES on the same connection; unit: GB)
#   PEERS     comma-separated: haproxy,nginx (the default), or none
#   BIN       egressd binaries, each run with its own sni listener
# env: LOADGEN (a built loadgen), else it is built from BENCH/loadgen
#      (BENCH defaults to ../shared/bench); BYTES; KEEP=1 keeps the work
#      directory (configs, logs); PROXY_THREADS (HAProxy's nbthread and
#      nginx's worker_processes, default 1; compare.sh runs 2);
#      CONFIG_c1 .. CONFIG_c4: YAML lines added to that binary's config
#      (e.g. CONFIG_c2='busy_poll: 50us'); HAPROXY_GLOBAL: lines added to
#      HAProxy's global section (e.g. busy-polling). Needs taskset, haproxy,
#      nginx (with its stream module), python3.
set -euo pipefail

ROUNDS=4 PEERS=haproxy,nginx
while getopts n:p: o; do
  case $o in
    n) ROUNDS=$OPTARG ;;
    p) PEERS=$OPTARG ;;
    *) awk 'NR > 1 && !/^#/ {exit} NR > 1' "$0"; exit 2 ;;
  esac
done
shift $((OPTIND - 1))
[[ $# -ge 2 ]] || { awk 'NR > 1 && !/^#/ {exit} NR > 1' "$0"; exit 2; }
SCENARIO=$1; shift
[[ $PEERS == none ]] && PEERS=""

W=$(mktemp -d /tmp/egressd-ab.XXXXXX)
PIDS=()
cleanup() { kill "${PIDS[@]}" 2>/dev/null || true; wait 2>/dev/null || true; [[ -n ${KEEP:-} ]] || rm -rf "$W"; }
trap cleanup EXIT

source "$(dirname "$0")/loadgen.sh"
LOAD=(taskset -c 0) PROXY=(taskset -c 1)

read -r P_RAW P_TLS P_HAP P_NGX P_C1 P_C2 P_C3 P_C4 < <("$LG" ports 8)
CAND_PORTS=("$P_C1" "$P_C2" "$P_C3" "$P_C4")
[[ $# -le 4 ]] || { echo "at most 4 binaries" >&2; exit 2; }

case $SCENARIO in
  handshakes-raw | latency | download-raw | upload-raw | both-raw) UP=$P_RAW MODE=raw ;;
  handshakes-tls | download-tls | upload-tls | both-tls) UP=$P_TLS MODE=tls ;;
  *) echo "unknown scenario $SCENARIO" >&2; exit 2 ;;
esac

"${LOAD[@]}" "$LG" serve --raw "127.0.0.1:$P_RAW" --tls "127.0.0.1:$P_TLS" --quiet >"$W/serve.log" 2>&1 &
PIDS+=($!)

declare -A PID TGT
SYSTEMS=()
if [[ ,$PEERS, == *,haproxy,* ]]; then
  cat >"$W/haproxy.cfg" <<EOF
global
    nbthread ${PROXY_THREADS:-1}
    maxconn 4000
    tune.pipesize 262144
    log stdout format raw local0 info
${HAPROXY_GLOBAL:-}
defaults
    mode tcp
    log global
    log-format '{"src":"%ci:%cp","dst":"%si:%sp","fqdn":"%[var(sess.sni)]","bytes_up":%U,"bytes_down":%B,"duration_ms":%Tt,"term":"%ts"}'
    maxconn 4000
    timeout connect 5s
    timeout client 15m
    timeout server 15m
    option splice-request
    option splice-response
frontend fe
    bind 127.0.0.1:$P_HAP
    tcp-request inspect-delay 5s
    tcp-request content set-var(sess.sni) req.ssl_sni if { req.ssl_hello_type 1 }
    tcp-request content accept if { req.ssl_hello_type 1 }
    use_backend be if { req.ssl_sni -i localhost }
    default_backend be_deny
backend be
    server upstream 127.0.0.1:$UP
backend be_deny
    tcp-request content reject
EOF
  "${PROXY[@]}" haproxy -f "$W/haproxy.cfg" >/dev/null 2>"$W/haproxy.err" &
  PIDS+=($!); PID[haproxy]=$!; TGT[haproxy]=127.0.0.1:$P_HAP; SYSTEMS+=(haproxy)
fi
if [[ ,$PEERS, == *,nginx,* ]]; then
  mkdir -p "$W/nginx"
  mod=""
  for m in /usr/lib/nginx/modules/ngx_stream_module.so /usr/share/nginx/modules/ngx_stream_module.so; do
    [[ -e $m ]] && mod="load_module $m;" && break
  done
  cat >"$W/nginx/nginx.conf" <<EOF
$mod
worker_processes ${PROXY_THREADS:-1};
worker_rlimit_nofile 20000;
pid $W/nginx/nginx.pid;
error_log $W/nginx/error.log error;
daemon off;
events { worker_connections 10000; use epoll; }
stream {
    map \$ssl_preread_server_name \$up {
        hostnames;
        localhost 127.0.0.1:$UP;
        default unix:$W/nginx/blackhole.sock;
    }
    log_format egress escape=json '{"src":"\$remote_addr:\$remote_port","dst":"\$upstream_addr","fqdn":"\$ssl_preread_server_name","bytes_up":\$upstream_bytes_sent,"bytes_down":\$bytes_sent,"duration_s":\$session_time,"status":\$status}';
    access_log $W/nginx/access.log egress buffer=64k flush=1s;
    proxy_buffer_size 64k;
    preread_timeout 5s;
    proxy_connect_timeout 5s;
    proxy_timeout 15m;
    tcp_nodelay on;
    server { listen 127.0.0.1:$P_NGX reuseport backlog=4096; ssl_preread on; proxy_pass \$up; }
}
EOF
  "${PROXY[@]}" nginx -p "$W/nginx" -c "$W/nginx/nginx.conf" -e "$W/nginx/error.log" >/dev/null 2>&1 &
  PIDS+=($!); master=$!
  for _ in $(seq 50); do
    workers=$(pgrep -P "$master" | paste -sd' ' || true)
    [[ $(wc -w <<<"$workers") -ge ${PROXY_THREADS:-1} ]] && break
    sleep 0.1
  done
  [[ -n $workers ]] || { echo "nginx did not start: $(cat "$W/nginx/error.log")" >&2; exit 1; }
  # every worker: a connection is on whichever one accepted it
  PID[nginx]=$workers; TGT[nginx]=127.0.0.1:$P_NGX; SYSTEMS+=(nginx)
fi
i=0
for bin in "$@"; do
  port=${CAND_PORTS[$i]}; i=$((i + 1))
  cat >"$W/c$i.yaml" <<EOF
listeners:
  - {name: sni, mode: sni, address: 127.0.0.1:$port, upstream_port: $UP}
timeouts: {first_bytes: 300ms, client_hello: 5s, connect: 5s, idle: 15m}
log: {format: json}
policy:
  default: deny
  rules:
    - {name: bench, action: allow, fqdn: ["localhost"], destinations: ["127.0.0.0/8", "::1/128"]}
EOF
  extra=CONFIG_c$i
  [[ -z ${!extra:-} ]] || printf '%s\n' "${!extra}" >>"$W/c$i.yaml"
  "${PROXY[@]}" "$bin" run --config "$W/c$i.yaml" >/dev/null 2>"$W/c$i.err" &
  PIDS+=($!); PID[c$i]=$!; TGT[c$i]=127.0.0.1:$port; SYSTEMS+=("c$i")
  echo "c$i = $bin${!extra:+ with ${!extra}}"
done
sleep 1
for s in "${SYSTEMS[@]}"; do
  "${LOAD[@]}" "$LG" probe --target "${TGT[$s]}" --mode "$MODE" --expect allow --wait 10s >/dev/null 2>&1 ||
    { echo "$s does not relay the allowed name" >&2; exit 1; }
done

# cpu PID...: user and system clock ticks, and context switches of all
# threads, summed over the processes.
cpu() {
  local ut st cs p
  read -r ut st < <(for p in "$@"; do cat "/proc/$p/stat"; done | awk '{u += $14; s += $15} END {print u, s}')
  cs=$(for p in "$@"; do cat /proc/"$p"/task/*/status; done | awk '/ctxt_switches/ {s += $2} END {print s}')
  echo "$ut $st $cs"
}

# ipis: the cross-CPU interrupts the proxy's CPU (1) has received, wake-ups
# (function-call and rescheduling interrupts) sent by the load's CPU: a
# proxy woken once per small arrival shows here, and the load's CPU pays
# for each.
ipis() { awk '/^ *(CAL|RES):/ {s += $3} END {print s}' /proc/interrupts; }

BYTES=${BYTES:-2G}
for r in $(seq "$ROUNDS"); do
  # Each round starts one system further on: on this host whichever runs
  # in a given place of a round can draw a slower level of wake-up
  # latency (docs/performance.md, "The sixth round"), so no system keeps
  # one place.
  k=$(((r - 1) % ${#SYSTEMS[@]}))
  for s in "${SYSTEMS[@]:k}" "${SYSTEMS[@]:0:k}"; do
    read -r u0 s0 c0 < <(cpu ${PID[$s]})
    i0=$(ipis)
    case $SCENARIO in
      handshakes-*) cmd=(handshakes --mode "$MODE" --concurrency 64 --duration 4s) ;;
      latency) cmd=(latency --mode raw --count 20000) ;;
      download-*) cmd=(throughput --mode "$MODE" --parallel "${PARALLEL:-1}" --bytes "$BYTES" --dir down --sni localhost) ;;
      upload-*) cmd=(throughput --mode "$MODE" --parallel "${PARALLEL:-1}" --bytes "$BYTES" --dir up --sni localhost) ;;
      both-*) cmd=(throughput --mode "$MODE" --parallel 1 --bytes "$BYTES" --dir both --sni localhost) ;;
    esac
    # both-*: the two lines, download then upload, as one JSON list
    out=$("${LOAD[@]}" "$LG" "${cmd[@]}" --target "${TGT[$s]}" 2>&1 | grep '^{' | paste -sd, | sed 's/^/[/; s/$/]/')
    read -r u1 s1 c1 < <(cpu ${PID[$s]})
    i1=$(ipis)
    python3 - "$SCENARIO" "$s" "$out" "$u0" "$s0" "$c0" "$u1" "$s1" "$c1" "$(getconf CLK_TCK)" "$i0" "$i1" <<'EOF'
import json, sys
scn, s, out = sys.argv[1:4]
u0, s0, c0, u1, s1, c1, hz, i0, i1 = map(float, sys.argv[4:])
ds = json.loads(out)
d = ds[-1]
if scn.startswith("handshakes"):
    units, unit, fig = d["conns"], "us/conn", "%6.0f conn/s" % d["conn_s"]
    scale = 1e6
elif scn == "latency":
    # the proxy's CPU covers loadgen's 1,000 warm-up echoes too
    units, unit, fig = 21000, "us/echo", "p50 %6.1f us  p99 %6.1f us" % (d["p50_us"], d["p99_us"])
    scale = 1e6
else:
    # CPU over every direction run: both-* covers twice the bytes
    units, unit = sum(x["bytes_per_stream"] * x.get("streams", 1) for x in ds) / 1e9, "ms/GB"
    fig = " ".join("%s %6.0f MB/s" % (x["dir"], x["mb_s"]) for x in ds) if len(ds) > 1 else "%6.0f MB/s" % d["mb_s"]
    scale = 1e3
user, sys_ = (u1 - u0) / hz / units * scale, (s1 - s0) / hz / units * scale
per = unit.split("/")[1]
print("%-8s %s  cpu %7.1f %s (user %6.1f, sys %6.1f)  ctx switches %.2f per %s  IPIs %.2f per %s" % (
    s, fig, user + sys_, unit, user, sys_, (c1 - c0) / units, per, (i1 - i0) / units, per))
EOF
    sleep 0.5
  done
done
