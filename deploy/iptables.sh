#!/bin/sh
# Transparent interception for egressd with iptables (IPv4; for IPv6 run it
# with IPTABLES=ip6tables and a listener on [::]). The same rules as the
# README's recipe.
#
#   deploy/iptables.sh add|delete
#
# Environment (defaults in brackets):
#   MODE      redirect | tproxy [redirect]
#   IFACE     interface the workloads' traffic arrives on [eth1]; "" to skip
#             forwarded traffic
#   PORT      egressd's transparent listener [15001]
#   MARK      egressd's `mark:` (its own upstream sockets) [0x100]
#   LOCAL     1: also intercept this host's own processes (redirect only) [1]
#   TPROXY_MARK, TABLE  tproxy's routing mark and table [0x1, 100]
#   IPTABLES  iptables binary [iptables]
#
# A tproxy listener needs `tproxy: true` and egressd needs CAP_NET_ADMIN.
# Run as root. "delete" removes exactly what "add" added.
set -eu

action=${1:-}
MODE=${MODE:-redirect}
IFACE=${IFACE-eth1}
PORT=${PORT:-15001}
MARK=${MARK:-0x100}
LOCAL=${LOCAL:-1}
TPROXY_MARK=${TPROXY_MARK:-0x1}
TABLE=${TABLE:-100}
IPTABLES=${IPTABLES:-iptables}

case $action in
add) op=-A ;;
delete) op=-D ;;
*) echo "usage: $0 add|delete (MODE=redirect|tproxy IFACE= PORT= MARK=)" >&2; exit 2 ;;
esac

ipfam=-4
if [ "$IPTABLES" = ip6tables ]; then ipfam=-6; fi

# A connection addressed to this host itself (egressd's DNS forwarder, its
# admin endpoint, sshd, on any of the host's addresses, loopback included)
# is not egress: each chain returns it before intercepting.
local_dst="-p tcp -m addrtype --dst-type LOCAL -j RETURN"

case $MODE in
redirect)
  # Traffic forwarded for other hosts (containers, VMs, a routed subnet).
  if [ -n "$IFACE" ]; then
    $IPTABLES -t nat $op PREROUTING -i "$IFACE" $local_dst
    $IPTABLES -t nat $op PREROUTING -i "$IFACE" -p tcp -j REDIRECT --to-ports "$PORT"
  fi
  # This host's own processes: egressd's own connections carry MARK and
  # must not loop back into it.
  if [ "$LOCAL" = 1 ]; then
    $IPTABLES -t nat $op OUTPUT -p tcp -m mark --mark "$MARK" -j RETURN
    $IPTABLES -t nat $op OUTPUT $local_dst
    $IPTABLES -t nat $op OUTPUT -p tcp -j REDIRECT --to-ports "$PORT"
  fi
  ;;
tproxy)
  if [ -z "$IFACE" ]; then echo "$0: tproxy needs IFACE" >&2; exit 2; fi
  any=0.0.0.0
  if [ $ipfam = -6 ]; then any=::; fi
  $IPTABLES -t mangle $op PREROUTING -i "$IFACE" $local_dst
  $IPTABLES -t mangle $op PREROUTING -i "$IFACE" -p tcp -j TPROXY --on-port "$PORT" --on-ip "$any" --tproxy-mark "$TPROXY_MARK/$TPROXY_MARK"
  if [ "$action" = add ]; then
    ip $ipfam rule add fwmark "$TPROXY_MARK/$TPROXY_MARK" lookup "$TABLE"
    if [ $ipfam = -4 ]; then
      ip route add local 0.0.0.0/0 dev lo table "$TABLE"
    else
      ip -6 route add local ::/0 dev lo table "$TABLE"
    fi
  else
    ip $ipfam rule del fwmark "$TPROXY_MARK/$TPROXY_MARK" lookup "$TABLE"
    ip $ipfam route flush table "$TABLE"
  fi
  ;;
*) echo "$0: MODE must be redirect or tproxy" >&2; exit 2 ;;
esac
