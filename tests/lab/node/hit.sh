#!/bin/sh
# usage: hit.sh <url> <n> [timeout-seconds]: n sequential GETs, one output line per request (the body, or ERROR).
# (not "wget -T": busybox 1.35 from Debian segfaults with it; "timeout" bounds each request instead)
URL=$1 N=${2:-1} T=${3:-5}
i=0
while [ "$i" -lt "$N" ]; do
  timeout "$T" wget -qO- "$URL" 2>/dev/null || echo "ERROR"
  i=$((i + 1))
done
