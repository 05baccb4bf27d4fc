#!/bin/sh
# Runs INSIDE a lab node: program it the way kubelet and kube-proxy do.
# usage: program-rules.sh <kube-proxy's mode: iptables|iptables-legacy|nft> <rules file or "none">
# kubelet's chains always go to the node's own backend (nft here). iptables mode: kube-proxy's restore input goes
# to $IPT with --noflush (Docker's embedded-DNS rules in the node stay, as on real kind nodes), then its jumps from
# the built-in chains are ensured one by one (EnsureRule, pkg/proxy/iptables/proxier.go iptablesJumpChains).
# nftables mode: kube-proxy's `nft -f` input (its own table, base chains hooked by themselves).
set -eu
IPT=$1 RULES=$2
iptables-nft-restore --noflush <<'KUBELET'
*mangle
:KUBE-IPTABLES-HINT - [0:0]
:KUBE-KUBELET-CANARY - [0:0]
COMMIT
*nat
:KUBE-KUBELET-CANARY - [0:0]
COMMIT
*filter
:KUBE-KUBELET-CANARY - [0:0]
COMMIT
KUBELET
[ "$RULES" = none ] && exit 0
if [ "$IPT" = nft ]; then
  exec nft -f "$RULES"
fi
# iptables mode: kube-proxy's startup cleanup of the nftables mode's table (a node that ran in nftables mode)
if nft list table ip kube-proxy >/dev/null 2>&1; then nft delete table ip kube-proxy; fi
"$IPT-restore" --noflush <<'CANARY'
*mangle
:KUBE-PROXY-CANARY - [0:0]
COMMIT
*nat
:KUBE-PROXY-CANARY - [0:0]
COMMIT
*filter
:KUBE-PROXY-CANARY - [0:0]
COMMIT
CANARY
"$IPT-restore" --noflush "$RULES"
has() { grep -q "^:$1 " "$RULES"; }
# EnsureRule(Prepend): each jump goes to the top, so the last one in kube-proxy's list ends up first
ensure() {
  t=$1 c=$2; shift 2
  for target; do :; done
  has "$target" || return 0   # only jump to chains this restore input declares
  "$IPT" -t "$t" -C "$c" "$@" 2>/dev/null || "$IPT" -t "$t" -I "$c" 1 "$@"
}
if has KUBE-FIREWALL; then   # kubelet's jump, appended
  for c in INPUT OUTPUT; do "$IPT" -t filter -C "$c" -j KUBE-FIREWALL 2>/dev/null || "$IPT" -t filter -A "$c" -j KUBE-FIREWALL; done
fi
ensure filter INPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes externally-visible service portals" -j KUBE-EXTERNAL-SERVICES
ensure filter FORWARD -m conntrack --ctstate NEW -m comment --comment "kubernetes externally-visible service portals" -j KUBE-EXTERNAL-SERVICES
ensure filter INPUT -m comment --comment "kubernetes health check service ports" -j KUBE-NODEPORTS
ensure filter FORWARD -m conntrack --ctstate NEW -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
ensure filter OUTPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
ensure filter FORWARD -m comment --comment "kubernetes forwarding rules" -j KUBE-FORWARD
for c in INPUT OUTPUT FORWARD; do
  ensure filter "$c" -m conntrack --ctstate NEW -m comment --comment "kubernetes load balancer firewall" -j KUBE-PROXY-FIREWALL
done
ensure nat OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
ensure nat PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
ensure nat POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING
