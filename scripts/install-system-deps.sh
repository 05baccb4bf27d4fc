#!/usr/bin/env bash
# What the test suites need from Debian 12 (a bare machine): python venv, iptables (nft and legacy), network
# namespaces (nft: kube-proxy's nftables mode, tests/test_nft.py), docker for the lab, conntrack and busybox for the lab's node image. Idempotent; needs root.
set -euo pipefail
packages=(python3 python3-venv python3-pip iptables iproute2 conntrack docker.io busybox-static libcap2-bin
          procps ca-certificates chromium nftables)  # chromium: the report opens in a real browser (tests/test_report_browser.py)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "install-system-deps: missing ${missing[*]}; run as root (or: sudo $0)" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
