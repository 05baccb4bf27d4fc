"""Make a big node dump the way a real node prints it: kube-proxy-shaped rules for N ClusterIP services with 3
endpoints each, loaded into a scratch network namespace and dumped back with the real `iptables-save -c`.

Needs root and iptables. The dump is cached under /tmp (keyed by N), since loading 150,000 lines takes seconds.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

from svcdoctor.model.hashes import endpoint_chain, service_chain

CACHE_DIR = "/tmp/svcdoctor-bench"


def restore_text(n_services: int, node_index: int = 0) -> str:
    chains: list[str] = []
    rules: list[str] = []
    for i in range(n_services):
        spn = f"scale/svc-{i}:http"
        vip = f"10.201.{i // 250}.{i % 250 + 1}"
        svc = service_chain("KUBE-SVC-", spn, "tcp")
        chains.append(svc)
        rules.append(
            f'[{i % 7}:{(i % 7) * 60}] -A KUBE-SERVICES -d {vip}/32 -p tcp -m comment --comment "{spn} cluster IP" '
            f"-m tcp --dport 80 -j {svc}"
        )
        rules.append(
            f'-A {svc} ! -s 10.10.0.0/16 -d {vip}/32 -p tcp -m comment --comment "{spn} cluster IP" -m tcp --dport 80 '
            f"-j KUBE-MARK-MASQ"
        )
        eps = [f"10.10.{k}.{10 + i % 200}:8080" for k in (2, 3, 4)]
        for j, ep in enumerate(eps):
            sep = endpoint_chain(spn, "tcp", ep)
            chains.append(sep)
            prob = {0: " -m statistic --mode random --probability 0.3333333333",
                    1: " -m statistic --mode random --probability 0.5000000000", 2: ""}[j]
            rules.append(f'-A {svc} -m comment --comment "{spn} -> {ep}"{prob} -j {sep}')
            rules.append(f'-A {sep} -s {ep.split(":")[0]}/32 -m comment --comment "{spn}" -j KUBE-MARK-MASQ')
            rules.append(f'-A {sep} -p tcp -m comment --comment "{spn}" -m tcp -j DNAT --to-destination {ep}')
    static = [
        "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES",
        "-A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES",
        "-A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING",
        "-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000",
        "-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN",
        "-A KUBE-POSTROUTING -j MARK --xor-mark 0x4000",
        "-A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully",
        "-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports; NOTE: this must be the last rule in this chain\" "
        "-m addrtype --dst-type LOCAL -j KUBE-NODEPORTS",
    ]
    head = ["*nat", ":PREROUTING ACCEPT [0:0]", ":INPUT ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]", ":POSTROUTING ACCEPT [0:0]",
            ":KUBE-SERVICES - [0:0]", ":KUBE-NODEPORTS - [0:0]", ":KUBE-MARK-MASQ - [0:0]", ":KUBE-POSTROUTING - [0:0]"]
    head += [f":{c} - [0:0]" for c in chains]
    return "\n".join(head + static[:3] + rules + static[3:] + ["COMMIT", ""])


def real_dump(n_services: int) -> str:
    """The kernel's `iptables-save -c` of the generated rules (cached)."""
    os.makedirs(CACHE_DIR, exist_ok=True)
    path = os.path.join(CACHE_DIR, f"nat-{n_services}.save")
    rules_path = os.path.join(CACHE_DIR, f"nat-{n_services}.rules")
    if os.path.exists(path):
        return open(path).read()
    with open(rules_path, "w") as f:
        f.write(restore_text(n_services))
    ns = "sdbench-" + uuid.uuid4().hex[:8]
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        with open(rules_path) as f:
            subprocess.run(["ip", "netns", "exec", ns, "iptables-restore", "-c"], stdin=f, check=True)
        out = subprocess.run(["ip", "netns", "exec", ns, "iptables-save", "-c"], check=True, capture_output=True,
                             text=True).stdout
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)
    with open(path, "w") as f:
        f.write(out)
    return out


if __name__ == "__main__":
    text = real_dump(int(sys.argv[1]) if len(sys.argv) > 1 else 10000)
    print(f"{len(text.splitlines())} lines")
