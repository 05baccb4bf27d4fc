#!/bin/sh
# Planted fault "hung": stands in for an iptables-nft-save that never returns (a wedged binary or lock).
exec sleep 600
