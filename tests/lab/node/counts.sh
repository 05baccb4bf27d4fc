#!/bin/sh
# Print "<pod> <client-address>" for every request each pod on this node has served.
for f in /lab/pods/*.requests; do
  [ -e "$f" ] || continue
  pod=$(basename "$f" .requests)
  while read -r addr; do echo "$pod $addr"; done < "$f"
done
