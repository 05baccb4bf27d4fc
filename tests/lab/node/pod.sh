#!/bin/sh
# Runs INSIDE a lab node. usage: pod.sh <pod> <pod-ip> <gateway-ip> <port> <host-veth>
# A "pod" is a network namespace joined to the node by a veth pair, ptp style like kindnet (node side holds the
# gateway /32, a /32 host route per pod), with an HTTP server (busybox httpd + CGI) that counts what it serves.
set -eu
POD=$1 PODIP=$2 GW=$3 PORT=$4 HOSTIF=$5
MTU=$(cat /sys/class/net/eth0/mtu)
ip netns add "$POD"
ip link add "$HOSTIF" mtu "$MTU" type veth peer name eth0 mtu "$MTU" netns "$POD"
ip addr add "$GW/32" dev "$HOSTIF"
ip link set "$HOSTIF" up
ip route add "$PODIP/32" dev "$HOSTIF" scope host
ip -n "$POD" link set lo up
ip -n "$POD" addr add "$PODIP/24" dev eth0
ip -n "$POD" link set eth0 up
ip -n "$POD" route add default via "$GW" dev eth0 onlink
# Pod files live under /lab on the container's root fs: docker's --tmpfs mounts are noexec (CGI would 404).
WWW=/lab/www/$POD
mkdir -p "$WWW/cgi-bin" /lab/pods
: > "/lab/pods/$POD.requests"
echo ready > "$WWW/ready.txt"   # readiness probes fetch this static file, so they are not counted
cat > "$WWW/cgi-bin/index.cgi" <<CGI
#!/bin/sh
# One line per request served: the pod's request counter. Appends of one short line do not interleave.
echo "\$REMOTE_ADDR" >> /lab/pods/$POD.requests
printf 'Content-Type: text/plain\r\n\r\n'
echo "pod=$POD ip=$PODIP node=\$(hostname) client=\$REMOTE_ADDR"
CGI
chmod +x "$WWW/cgi-bin/index.cgi"
# full path to ip: busybox's setsid would otherwise run busybox's own "ip" applet, which has no netns
IP=$(command -v ip)
setsid "$IP" netns exec "$POD" busybox httpd -f -p "0.0.0.0:$PORT" -h "$WWW" </dev/null >"/lab/pods/$POD.log" 2>&1 &
