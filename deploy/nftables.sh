#!/bin/sh
# Transparent interception for egressd with nftables, IPv4 and IPv6 in one
# table ("inet egressd"). The same rules as the README's recipe.
#
#   deploy/nftables.sh add|delete
#
# Environment (defaults in brackets): MODE redirect|tproxy [redirect],
# IFACE [eth1] ("" to skip forwarded traffic), PORT [15001], MARK [0x100],
# LOCAL 1|0 [1] (redirect only: this host's own processes too),
# TPROXY_MARK [0x1], TABLE [100].
#
# A tproxy listener needs `tproxy: true` and egressd needs CAP_NET_ADMIN.
# Run as root; "delete" drops the table (and tproxy's routing rules).
set -eu

action=${1:-}
MODE=${MODE:-redirect}
IFACE=${IFACE-eth1}
PORT=${PORT:-15001}
MARK=${MARK:-0x100}
LOCAL=${LOCAL:-1}
TPROXY_MARK=${TPROXY_MARK:-0x1}
TABLE=${TABLE:-100}

case $action in
add) ;;
delete)
  nft delete table inet egressd
  if [ "$MODE" = tproxy ]; then
    ip -4 rule del fwmark "$TPROXY_MARK/$TPROXY_MARK" lookup "$TABLE" || true
    ip -6 rule del fwmark "$TPROXY_MARK/$TPROXY_MARK" lookup "$TABLE" || true
    ip -4 route flush table "$TABLE" || true
    ip -6 route flush table "$TABLE" || true
  fi
  exit 0 ;;
*) echo "usage: $0 add|delete (MODE=redirect|tproxy IFACE= PORT= MARK=)" >&2; exit 2 ;;
esac

# A connection addressed to this host itself (egressd's DNS forwarder, its
# admin endpoint, sshd, on any of the host's addresses, loopback included)
# is not egress: each chain returns it before intercepting.
forwarded=""
local_rules=""
case $MODE in
redirect)
  if [ -n "$IFACE" ]; then
    forwarded="chain prerouting_nat {
    type nat hook prerouting priority dstnat;
    iifname \"$IFACE\" fib daddr type local return
    iifname \"$IFACE\" meta l4proto tcp redirect to :$PORT
  }"
  fi
  if [ "$LOCAL" = 1 ]; then
    local_rules="chain output_nat {
    type nat hook output priority -100;
    meta mark $MARK return
    fib daddr type local return
    meta l4proto tcp redirect to :$PORT
  }"
  fi
  ;;
tproxy)
  if [ -z "$IFACE" ]; then echo "$0: tproxy needs IFACE" >&2; exit 2; fi
  forwarded="chain prerouting_tproxy {
    type filter hook prerouting priority mangle;
    iifname \"$IFACE\" fib daddr type local return
    iifname \"$IFACE\" meta l4proto tcp tproxy to :$PORT meta mark set $TPROXY_MARK accept
  }"
  ip -4 rule add fwmark "$TPROXY_MARK/$TPROXY_MARK" lookup "$TABLE"
  ip -4 route add local 0.0.0.0/0 dev lo table "$TABLE"
  ip -6 rule add fwmark "$TPROXY_MARK/$TPROXY_MARK" lookup "$TABLE"
  ip -6 route add local ::/0 dev lo table "$TABLE"
  ;;
*) echo "$0: MODE must be redirect or tproxy" >&2; exit 2 ;;
esac

nft -f - <<NFT
table inet egressd {
  $forwarded
  $local_rules
}
NFT
