"""The docker lab: a kind-shaped `myk8s` cluster built from local parts, with real netfilter rules and real traffic.

Follows docs/reference/lab.md (read it for the why of each step): a light node image imported from the host's
own binaries (no registry), network `kind` 172.18.0.0/16, node containers with kind's labels, pods as network
namespaces with busybox httpd servers that count the requests they serve, kindnet-style routes, a client `mypc`
at 172.18.0.100, and every node programmed with the rules kube-proxy writes for the scenario's objects: iptables
mode as 1.28 writes it (`svcdoctor.model.expected`), nftables mode as 1.34–1.35 does
(`svcdoctor.model.nft.expected`), loaded with the node's own `iptables-restore` / `nft -f`. It is not kind: no
kubelet, no containerd, no kube-proxy process.

Everything the lab starts carries the label `svcdoctor.lab`, and teardown removes only that (and stops dockerd
only if the lab started it).
"""

from __future__ import annotations

import hashlib
import io
import ipaddress
import os
import re
import shutil
import subprocess
import tarfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from . import scenario as sc

REPO_ROOT = Path(__file__).resolve().parents[2]
LAB_DIR = Path(os.environ.get("SVCDOCTOR_LAB_DIR", "/tmp/svcdoctor-lab"))
IMAGE = "svcdoctor-lab/node-light:latest"
NODE_SCRIPTS = Path(__file__).with_name("node")
LAB_LABEL = "svcdoctor.lab"  # on everything the lab creates: what teardown may remove
RECIPE_LABEL = "svcdoctor.lab.recipe"
CLUSTER_LABEL = "io.x-k8s.kind.cluster"
ROLE_LABEL = "io.x-k8s.kind.role"
LOAD_BALANCER = f"{sc.CLUSTER}-external-load-balancer"
IMAGE_RECIPE_VERSION = "4"  # bump when the image contents below change

# Host binaries for the light image (docs/reference/lab.md §1 b); their libraries come along through ldd.
IMAGE_BINARIES = [
    "/usr/bin/dash",
    "/usr/sbin/xtables-nft-multi",
    "/usr/sbin/xtables-legacy-multi",
    "/usr/bin/ip",
    "/usr/sbin/conntrack",
    "/usr/bin/busybox",
    "/usr/sbin/nft",  # kube-proxy's nftables mode (docs/reference/lab.md §9)
]
XTABLES_DIR = "/usr/lib/x86_64-linux-gnu/xtables"  # iptables extensions, dlopen()ed (ldd does not see them)

# Linux capability names by number, to turn the host's bounding set into --cap-drop names (docs/reference/lab.md §1, §5.1).
CAPABILITIES = [
    "CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID", "KILL", "SETGID", "SETUID", "SETPCAP",
    "LINUX_IMMUTABLE", "NET_BIND_SERVICE", "NET_BROADCAST", "NET_ADMIN", "NET_RAW", "IPC_LOCK", "IPC_OWNER",
    "SYS_MODULE", "SYS_RAWIO", "SYS_CHROOT", "SYS_PTRACE", "SYS_PACCT", "SYS_ADMIN", "SYS_BOOT", "SYS_NICE",
    "SYS_RESOURCE", "SYS_TIME", "SYS_TTY_CONFIG", "MKNOD", "LEASE", "AUDIT_WRITE", "AUDIT_CONTROL", "SETFCAP",
    "MAC_OVERRIDE", "MAC_ADMIN", "SYSLOG", "WAKE_ALARM", "BLOCK_SUSPEND", "AUDIT_READ", "PERFMON", "BPF",
    "CHECKPOINT_RESTORE",
]


class LabUnavailable(Exception):
    """This machine cannot run the lab (no root, no docker binaries, ...). The message says why."""


class LabError(Exception):
    """A lab step failed."""


# --- prerequisites and dockerd --------------------------------------------------------------------------------
def unavailable_reason() -> str | None:
    """Why the lab cannot run here, or None."""
    if os.geteuid() != 0:
        return "the docker lab needs root (network namespaces, iptables in node containers, dockerd)"
    missing = [b for b in ("dockerd", "iptables-nft-save", "busybox", "ldd") if shutil.which(b) is None]
    missing += [p for p in IMAGE_BINARIES if not os.path.exists(p)]
    if missing:
        return (f"the docker lab needs {', '.join(missing)} "
                "(apt-get install docker.io iptables iproute2 conntrack busybox-static nftables)")
    return None


@dataclass
class DockerDaemon:
    """The docker daemon the lab talks to: the one already answering, else one this object starts (and stops)."""

    log_path: Path = LAB_DIR / "dockerd.log"
    pid_path: Path = LAB_DIR / "dockerd.pid"
    storage_driver: str = "overlay2"
    process: subprocess.Popen | None = None

    def client(self, timeout: float = 120.0):
        import docker

        return docker.from_env(timeout=timeout)

    def answers(self) -> bool:
        import docker

        try:
            self.client(timeout=5).close()
            return True
        except docker.errors.DockerException:
            return False

    def ensure(self, wait_seconds: float = 60.0):
        """A client of a running daemon; starts `dockerd` (logging to log_path) when none answers.

        overlay2 first (fast container creation, docs/reference/lab.md §5.2); vfs where overlay2 cannot work, e.g. a docker root
        that is itself on overlayfs (nested docker). The light image is 10 MB, so vfs costs little.
        """
        if self.answers():
            return self.client()
        if shutil.which("dockerd") is None:
            raise LabUnavailable("no docker daemon answers and dockerd is not installed")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        failures = []
        for driver in dict.fromkeys((self.storage_driver, "vfs")):
            with open(self.log_path, "ab") as log:
                self.process = subprocess.Popen(
                    ["dockerd", f"--storage-driver={driver}"],
                    stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                )
            self.pid_path.write_text(str(self.process.pid))
            deadline = time.monotonic() + wait_seconds
            while time.monotonic() < deadline and self.process.poll() is None:
                if self.answers():
                    return self.client()
                time.sleep(0.2)
            if self.process.poll() is None:
                self.stop()
                raise LabError(f"dockerd did not answer within {wait_seconds:g}s; see {self.log_path}:\n{self._log_tail()}")
            failures.append(f"--storage-driver={driver} exited {self.process.returncode}")
            self.process = None
            self.pid_path.unlink(missing_ok=True)
        raise LabError(f"dockerd would not start ({'; '.join(failures)}); see {self.log_path}:\n{self._log_tail()}")

    def _log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    @property
    def started_here(self) -> bool:
        return self.process is not None

    def stop(self) -> None:
        """Stop dockerd if this object started it (by its own PID, nothing else)."""
        if self.process is None:
            return
        stop_pid(self.process.pid, self.process)
        self.process = None
        self.pid_path.unlink(missing_ok=True)


def stop_pid(pid: int, process: subprocess.Popen | None = None, grace: float = 20.0) -> None:
    """SIGTERM one process by its id, wait for it, SIGKILL if it lingers."""
    try:
        os.kill(pid, 15)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if process is not None:
            if process.poll() is not None:
                return
        elif not Path(f"/proc/{pid}").exists():
            return
        time.sleep(0.1)
    try:
        os.kill(pid, 9)
    except ProcessLookupError:
        pass
    if process is not None:
        process.wait(timeout=10)


# --- the node image ------------------------------------------------------------------------------------------
def _image_recipe_hash() -> str:
    h = hashlib.sha256(IMAGE_RECIPE_VERSION.encode())
    paths = IMAGE_BINARIES + sorted(str(p) for p in Path(XTABLES_DIR).glob("*.so"))
    for path in paths:
        st = os.stat(path)
        h.update(f"{path}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:20]


def _merged_usr(path: str) -> str:
    """Debian 12 is merged-/usr: /lib, /lib64, /bin, /sbin are symlinks into /usr, and so are they in the image."""
    for top in ("/lib/", "/lib64/", "/bin/", "/sbin/"):
        if path.startswith(top):
            return "/usr" + path
    return path


def _libraries(binary: str) -> list[str]:
    out = subprocess.run(["ldd", binary], capture_output=True, text=True).stdout
    return [m for m in re.findall(r"(/\S+)", out) if os.path.exists(m)]


def build_light_image(client, tag: str = IMAGE) -> str:
    """The light node image (docs/reference/lab.md §1 b, ~10 MB, ~3 s), imported with `docker import`; rebuilt only when the
    host binaries it is made of change."""
    recipe = _image_recipe_hash()
    try:
        image = client.images.get(tag)
        if (image.labels or {}).get(RECIPE_LABEL) == recipe:
            return tag
    except Exception:  # docker.errors.ImageNotFound
        pass
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        added: set[str] = set()

        def add_dir(path: str) -> None:
            path = path.strip("/")
            if not path or path in added:
                return
            add_dir(os.path.dirname(path))
            info = tarfile.TarInfo(path)
            info.type, info.mode = tarfile.DIRTYPE, 0o1777 if path == "tmp" else 0o755
            tar.addfile(info)
            added.add(path)

        def add_symlink(path: str, target: str) -> None:
            path = path.strip("/")
            if path in added:
                return
            add_dir(os.path.dirname(path))
            info = tarfile.TarInfo(path)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tar.addfile(info)
            added.add(path)

        def add_data(dest: str, data: bytes, mode: int = 0o644) -> None:
            dest = _merged_usr(dest).strip("/")
            if dest in added:
                return
            add_dir(os.path.dirname(dest))
            info = tarfile.TarInfo(dest)
            info.size, info.mode = len(data), mode
            tar.addfile(info, io.BytesIO(data))
            added.add(dest)

        def add_host_file(path: str) -> None:
            with open(os.path.realpath(path), "rb") as fh:  # cp -L: the file, not the symlink
                add_data(path, fh.read(), os.stat(path).st_mode & 0o777)

        for d in ("usr/bin", "usr/sbin", "usr/lib/x86_64-linux-gnu", "usr/lib64", "etc", "run/netns", "tmp",
                  "proc", "sys", "dev", "var", "root", "lab"):
            add_dir(d)
        for link, target in (("bin", "usr/bin"), ("sbin", "usr/sbin"), ("lib", "usr/lib"), ("lib64", "usr/lib64"),
                             ("var/run", "../run")):
            add_symlink(link, target)
        for binary in IMAGE_BINARIES + sorted(str(p) for p in Path(XTABLES_DIR).glob("*.so")):
            add_host_file(binary)
            for lib in _libraries(binary):
                add_host_file(lib)
        for name in ("iptables", "iptables-save", "iptables-restore", "ip6tables", "ip6tables-save",
                     "ip6tables-restore"):
            # nft is the image's default backend (as the host's), legacy is there by its explicit name
            # ip6tables-nft-save and friends too, as on a kind node: svcdoctor reads IPv6 rules by that name
            family, _, rest = name.partition("tables")
            add_symlink(f"usr/sbin/{name}", "xtables-nft-multi")
            add_symlink(f"usr/sbin/{family}tables-nft{rest}", "xtables-nft-multi")
            add_symlink(f"usr/sbin/{family}tables-legacy{rest}", "xtables-legacy-multi")
        applets = subprocess.run(["busybox", "--list"], capture_output=True, text=True, check=True).stdout.split()
        for applet in applets:
            # busybox's ip has no netns and its ash prefers its own applets: ip stays iproute2's, sh is dash
            if applet not in ("ip", "busybox", "sh") and f"usr/bin/{applet}" not in added:
                add_symlink(f"usr/bin/{applet}", "busybox")
        add_symlink("usr/bin/sh", "dash")
        for etc in ("/etc/protocols", "/etc/services"):
            add_host_file(etc)
        add_data("/etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n")
        add_data("/etc/group", b"root:x:0:\n")
        add_data("/etc/nsswitch.conf", b"hosts: files dns\n")
    client.api.import_image_from_data(
        buf.getvalue(), repository=tag.split(":")[0], tag=tag.split(":")[1],
        changes=["ENV PATH=/usr/sbin:/usr/bin:/sbin:/bin", 'CMD ["sleep","infinity"]',
                 f"LABEL {RECIPE_LABEL}={recipe}"],
    )
    return tag


def privilege_options(client, image: str) -> dict:
    """docker run options for a kind-like privileged node.

    `--privileged` fails where the host's capability bounding set lacks some capability (runc: "unable to apply
    caps"; this VM lacks CAP_SYS_RESOURCE), and docker ignores --cap-drop with --privileged. The fallback is
    "privileged minus what the host does not have" (docs/reference/lab.md §1).
    """
    try:
        client.containers.run(image, ["true"], privileged=True, remove=True, labels={LAB_LABEL: "probe"})
        return {"privileged": True}
    except Exception:
        # the container was created but could not start, so remove=True never ran
        for probe in client.containers.list(all=True, filters={"label": f"{LAB_LABEL}=probe"}):
            probe.remove(force=True)
    status = Path("/proc/self/status").read_text()
    bounding = int(re.search(r"^CapBnd:\s*([0-9a-f]+)", status, re.M).group(1), 16)
    last = int(Path("/proc/sys/kernel/cap_last_cap").read_text())
    missing = [CAPABILITIES[i] for i in range(last + 1) if not bounding >> i & 1 and i < len(CAPABILITIES)]
    return {
        "cap_add": ["ALL"],
        "cap_drop": missing,
        "security_opt": ["seccomp=unconfined", "apparmor=unconfined"],
        "unconfined_paths": True,  # the CLI's --security-opt systempaths=unconfined
    }


# --- the lab -------------------------------------------------------------------------------------------------
@dataclass
class Lab:
    """The running lab for one scenario. `faults` records what is currently planted on which node."""

    client: object  # docker.DockerClient
    scenario: sc.Scenario = field(default_factory=sc.seed_scenario)
    image: str = IMAGE
    faults: dict[str, str] = field(default_factory=dict)
    created_network: bool = False
    timings: dict[str, float] = field(default_factory=dict)
    _privileges: dict | None = None

    # --- bring up / tear down ---
    def up(self) -> Lab:
        t0 = time.monotonic()
        self.down()
        build_light_image(self.client, self.image)
        self.timings["image"] = time.monotonic() - t0
        self._ensure_network()
        t1 = time.monotonic()
        for node in sc.NODES:
            self._create_node(node)
        self._create_plain(sc.CLIENT_NAME, ip=sc.CLIENT_IP, labels={}, cap_add=["NET_ADMIN"])
        # kind's HA load balancer: has the cluster label, is not a node. Created last so that docker's address
        # allocation cannot take an address a pinned container wants.
        self._create_plain(LOAD_BALANCER, ip=None,
                           labels={CLUSTER_LABEL: sc.CLUSTER, ROLE_LABEL: "external-load-balancer"})
        self.timings["containers"] = time.monotonic() - t1
        t2 = time.monotonic()
        with ThreadPoolExecutor(max_workers=len(sc.NODES)) as pool:
            list(pool.map(lambda n: self._configure_node(n, self.scenario.faults.get(n.name)), sc.NODES))
        self._configure_client()
        self.timings["configure"] = time.monotonic() - t2
        for node, fault in self.scenario.faults.items():
            if fault in (sc.STOPPED, sc.HUNG):
                self.plant(node, fault)  # on top of a healthy node
            else:
                self.faults[node] = fault  # already programmed in by _configure_node
        self.timings["total"] = time.monotonic() - t0
        return self

    def down(self) -> None:
        """Remove every container the lab made (by label), and the network if the lab created it."""
        for container in self.client.containers.list(all=True, filters={"label": f"{LAB_LABEL}={sc.CLUSTER}"}):
            container.remove(force=True)
        for net in self.client.networks.list(names=["kind"]):
            net.reload()  # the list call does not say which containers are attached
            if (net.attrs.get("Labels") or {}).get(LAB_LABEL) and not net.attrs.get("Containers"):
                net.remove()

    def _ensure_network(self) -> None:
        nets = self.client.networks.list(names=["kind"])
        if nets:
            subnets = [c.get("Subnet") for c in (nets[0].attrs.get("IPAM") or {}).get("Config") or []]
            if sc.NETWORK_SUBNET not in subnets:
                raise LabError(f"docker network 'kind' exists with subnets {subnets}, the lab needs {sc.NETWORK_SUBNET}")
            return
        import docker

        ipam = docker.types.IPAMConfig(pool_configs=[
            docker.types.IPAMPool(subnet=sc.NETWORK_SUBNET, gateway=sc.NETWORK_GATEWAY)])
        self.client.networks.create(
            "kind", driver="bridge", ipam=ipam, labels={LAB_LABEL: sc.CLUSTER},
            options={"com.docker.network.bridge.enable_ip_masquerade": "true",
                     "com.docker.network.driver.mtu": "1500"},
        )
        self.created_network = True

    def _run(self, name: str, ip: str | None, labels: dict, environment: dict | None = None, **host_options):
        """docker run -d --init --network kind [--ip IP] IMAGE sleep infinity, through the low-level API.

        The low-level API because `--security-opt systempaths=unconfined` is a docker CLI spelling: the daemon
        wants empty MaskedPaths/ReadonlyPaths instead (a writable /proc/sys for ip_forward and rp_filter).
        """
        existing = self.client.containers.list(all=True, filters={"name": f"^/{name}$"})
        for container in existing:
            if (container.labels or {}).get(LAB_LABEL) != sc.CLUSTER:
                raise LabError(f"a container named {name} exists and is not the lab's; refusing to touch it")
            container.remove(force=True)
        api = self.client.api
        unconfined_paths = host_options.pop("unconfined_paths", False)
        host_config = api.create_host_config(network_mode="kind", init=True, **host_options)
        if unconfined_paths:
            host_config["MaskedPaths"] = []
            host_config["ReadonlyPaths"] = []
        endpoint = api.create_endpoint_config(ipv4_address=ip) if ip else api.create_endpoint_config()
        created = api.create_container(
            self.image, ["sleep", "infinity"], name=name, hostname=name, labels={**labels, LAB_LABEL: sc.CLUSTER},
            environment=environment, host_config=host_config,
            networking_config=api.create_networking_config({"kind": endpoint}),
        )
        api.start(created["Id"])
        return self.client.containers.get(created["Id"])

    def _create_node(self, node: sc.NodeSpec):
        if self._privileges is None:
            self._privileges = privilege_options(self.client, self.image)
        # --tmpfs /run keeps `ip netns` bind mounts inside the container, as kind does (docs/reference/lab.md §5.5)
        return self._run(
            node.name, node.ip, {CLUSTER_LABEL: sc.CLUSTER, ROLE_LABEL: node.role},
            environment={"container": "docker"}, tmpfs={"/run": "", "/tmp": ""}, **self._privileges,
        )

    def _create_plain(self, name: str, ip: str | None, labels: dict, **options):
        return self._run(name, ip, labels, **options)

    def container(self, name: str):
        return self.client.containers.get(name)

    # --- node programming ---
    def _node_files(self, node: sc.NodeSpec, fault: str | None) -> bytes:
        """A tar for /: the node scripts, the setup script for this node, and kube-proxy's rules for its mode."""
        files: dict[str, bytes] = {f"lab/{p.name}": p.read_bytes() for p in NODE_SCRIPTS.glob("*.sh")}
        setup = ["set -eu",
                 "echo 1 > /proc/sys/net/ipv4/ip_forward",
                 # rp_filter 0 as on kind nodes (docs/reference/lab.md §5.7)
                 "for f in /proc/sys/net/ipv4/conf/*/rp_filter; do echo 0 > $f; done"]
        for pod in self.scenario.pods_on(node.name):
            veth = "veth" + hashlib.sha1(pod.name.encode()).hexdigest()[:8]  # kindnet-like, <= 15 characters
            setup.append(f"sh /lab/pod.sh {pod.name} {pod.ip} {node.pod_gateway} {pod.port} {veth}")
        for other in sc.NODES:
            if other.name != node.name:  # kindnet: every other node's pod range via that node
                setup.append(f"ip route replace {other.pod_cidr} via {other.ip}")
        files["lab/setup.sh"] = ("\n".join(setup) + "\n").encode()
        return _tar({**files, **self._rule_files(node, fault)})

    def _rule_files(self, node: sc.NodeSpec, fault: str | None) -> dict[str, bytes]:
        """kube-proxy's input for the node's mode: the iptables restore input (also on an nftables node with
        iptables leftovers: what it wrote before the switch) and/or the `nft -f` input."""
        if fault == sc.NO_RULES:
            return {}
        files = {}
        nft = self.scenario.mode_of(node.name) == sc.NFTABLES
        if not nft or fault == sc.LEFTOVERS:
            texts = node_restore_text(self.scenario, node, stale=fault == sc.STALE)
            files[IPTABLES_RULES] = (texts["filter"] + texts["nat"]).encode()
        if nft:
            files[NFT_RULES] = node_nft_text(self.scenario, node, stale=fault == sc.STALE).encode()
        return files

    def _exec(self, name: str, argv: list[str], check: bool = True) -> str:
        for attempt in range(3):
            try:
                result = self.container(name).exec_run(argv, demux=True)
                break
            except ValueError:  # docker-py misread the exec's stream ("N is not a valid stream", docker-py#3160)
                if attempt == 2:
                    raise
        out, err = result.output if isinstance(result.output, tuple) else (result.output, b"")
        text = (out or b"").decode(errors="replace")
        if check and result.exit_code != 0:
            raise LabError(f"{name}: {' '.join(argv)} exited {result.exit_code}: {(err or b'').decode(errors='replace')}{text}")
        return text

    def _configure_node(self, node: sc.NodeSpec, fault: str | None) -> None:
        container = self.container(node.name)
        if not container.put_archive("/", self._node_files(node, fault)):
            raise LabError(f"{node.name}: could not copy the lab files")
        self._exec(node.name, ["sh", "/lab/setup.sh"])
        self._program(node, fault)
        self._wait_pods(node)

    def _program(self, node: sc.NodeSpec, fault: str | None) -> None:
        """Load kube-proxy's rules for the node's mode (files from _rule_files, already in the node)."""
        nft = self.scenario.mode_of(node.name) == sc.NFTABLES
        if fault == sc.LEGACY and nft:
            raise LabError(f"{node.name}: the legacy fault is an iptables-mode fault")
        if fault == sc.NO_RULES:
            self._exec(node.name, ["sh", "/lab/program-rules.sh", "iptables", "none"])
            return
        if not nft or fault == sc.LEFTOVERS:
            backend = "iptables-legacy" if fault == sc.LEGACY else "iptables"
            self._exec(node.name, ["sh", "/lab/program-rules.sh", backend, "/" + IPTABLES_RULES])
        if nft:
            self._exec(node.name, ["sh", "/lab/program-rules.sh", "nft", "/" + NFT_RULES])

    def reprogram(self, node_name: str, fault: str | None = None) -> None:
        """Program a running node again for the current scenario's mode, in place (same container, pods and
        conntrack table, which is flushed): kube-proxy restarted in another mode. Going to nftables mode, kube-proxy's
        iptables chains are removed first, as its startup cleanup of the other mode does, unless `fault` is
        LEFTOVERS; going to iptables mode, program-rules.sh deletes the nftables table. Only healthy nodes and
        LEFTOVERS: other faults rebuild the node (`plant`)."""
        if fault not in (None, sc.LEFTOVERS):
            raise ValueError(f"reprogram plants no {fault!r}; use plant()")
        node = sc.NODE_BY_NAME[node_name]
        if self.scenario.mode_of(node_name) == sc.NFTABLES and fault != sc.LEFTOVERS:
            self._remove_kube_proxy_iptables(node)
        if not self.container(node.name).put_archive("/", _tar(self._rule_files(node, fault))):
            raise LabError(f"{node.name}: could not copy kube-proxy's rules")
        self._program(node, fault)
        self.conntrack_flush(node.name)
        if fault:
            self.faults[node_name] = fault
        else:
            self.faults.pop(node_name, None)

    def switch(self, scenario: sc.Scenario) -> None:
        """Make the running lab the given scenario (the same pods and services, other proxy modes or LEFTOVERS
        faults): every node reprogrammed in place, in parallel. Cheaper than a new cluster by far."""
        unsupported = {n: f for n, f in {**self.faults, **scenario.faults}.items() if f != sc.LEFTOVERS}
        if unsupported or [p.name for p in scenario.pods] != [p.name for p in self.scenario.pods]:
            raise LabError(f"switch() changes modes only; heal first ({unsupported})")
        self.scenario = scenario
        with ThreadPoolExecutor(max_workers=len(sc.NODES)) as pool:
            list(pool.map(lambda n: self.reprogram(n.name, scenario.faults.get(n.name)), sc.NODES))

    def _remove_kube_proxy_iptables(self, node: sc.NodeSpec) -> None:
        """kube-proxy's iptables chains and jumps out of the node's nft backend; kubelet's chains and Docker's DNS
        rules stay (a restore of what iptables-save printed, less kube-proxy's lines)."""
        kept = without_kube_proxy_chains(self._exec(node.name, ["iptables-nft-save"]))
        if not self.container(node.name).put_archive("/", _tar({CLEANUP_RULES: kept.encode()})):
            raise LabError(f"{node.name}: could not copy the cleanup input")
        self._exec(node.name, ["iptables-nft-restore", "/" + CLEANUP_RULES])

    def _wait_pods(self, node: sc.NodeSpec, seconds: float = 15.0) -> None:
        for pod in self.scenario.pods_on(node.name):
            deadline = time.monotonic() + seconds
            url = f"http://{pod.ip}:{pod.port}/ready.txt"  # a static file: not counted as a served request
            while "ready" not in self._exec(node.name, ["sh", "/lab/hit.sh", url, "1", "2"], check=False):
                if time.monotonic() > deadline:
                    raise LabError(f"pod {pod.name} on {node.name} never answered on {pod.ip}:{pod.port}")
                time.sleep(0.1)

    def _configure_client(self) -> None:
        data = (NODE_SCRIPTS / "hit.sh").read_bytes()
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            info = tarfile.TarInfo("lab/hit.sh")
            info.size, info.mode = len(data), 0o755
            tar.addfile(info, io.BytesIO(data))
        self.container(sc.CLIENT_NAME).put_archive("/", buf.getvalue())
        # "outside" reaches ClusterIPs through a route to myk8s-worker, as the seed's mypc does
        service_route = str(ipaddress.ip_network(sc.SERVICE_CIDR).supernet(new_prefix=16))
        self._exec(sc.CLIENT_NAME, ["ip", "route", "replace", service_route, "via", sc.NODE_BY_NAME[sc.WORKER].ip])

    def nft_list(self, node_name: str, family: str = "ip") -> str:
        """What `nft list table <family> kube-proxy` prints in the node (the harness's own view, for test oracles)."""
        return self._exec(node_name, ["nft", "list", "table", family, "kube-proxy"])

    # --- faults ---
    def plant(self, node_name: str, fault: str) -> None:
        """Plant a fault on one node of the running lab (the node is rebuilt where the fault needs it)."""
        node = sc.NODE_BY_NAME[node_name]
        if fault in (sc.LEGACY, sc.STALE, sc.NO_RULES):
            self.rebuild(node_name, fault)
        elif fault == sc.LEFTOVERS:
            if self.scenario.mode_of(node_name) != sc.NFTABLES:
                raise LabError(f"{node_name} runs in iptables mode: iptables leftovers are an nftables-mode fault")
            self.reprogram(node_name, fault)
        elif fault == sc.STOPPED:
            self.container(node.name).stop(timeout=1)
        elif fault == sc.HUNG:
            self._exec(node.name, ["ln", "-sf", "/lab/hang-save.sh", "/usr/sbin/iptables-nft-save"])
        else:
            raise ValueError(f"unknown fault {fault!r}")
        self.faults[node_name] = fault

    def heal(self, node_name: str) -> None:
        """Bring a node back to the scenario's healthy state: a fresh container (no legacy tables left behind), or,
        for iptables leftovers, the node reprogrammed in place."""
        if self.faults.get(node_name) == sc.LEFTOVERS:
            self.reprogram(node_name, None)
        else:
            self.rebuild(node_name, None)
        self.faults.pop(node_name, None)

    def rebuild(self, node_name: str, fault: str | None) -> None:
        node = sc.NODE_BY_NAME[node_name]
        self._create_node(node)
        self._configure_node(node, fault)

    # --- traffic and what it left behind ---
    def hit(self, source: str, url: str, n: int = 1, timeout: float = 5) -> list[str]:
        """n sequential GETs of url from `mypc`, a node (its own netns) or a pod (its netns on its node)."""
        args = ["sh", "/lab/hit.sh", url, str(n), f"{timeout:g}"]
        if source == sc.CLIENT_NAME or source in sc.NODE_BY_NAME:
            return self._exec(source, args).splitlines()
        pod = self.scenario.pod(source)
        return self._exec(pod.node, ["ip", "netns", "exec", pod.name, *args]).splitlines()

    def pod_requests(self) -> dict[str, list[str]]:
        """pod -> the client address of every request it served, read from all running nodes in parallel."""
        def read(node: sc.NodeSpec) -> str:
            if self.faults.get(node.name) == sc.STOPPED:
                return ""
            # the same answer twice in a row: a read docker cut short or garbled under load is not taken for the
            # count (the counts only grow, and nothing is sent while they are read)
            last = self._exec(node.name, ["sh", "/lab/counts.sh"])
            for _ in range(3):
                again = self._exec(node.name, ["sh", "/lab/counts.sh"])
                if again == last:
                    break
                last = again
            return last

        out: dict[str, list[str]] = {p.name: [] for p in self.scenario.pods}
        with ThreadPoolExecutor(max_workers=len(sc.NODES)) as pool:
            for text in pool.map(read, sc.NODES):
                for line in text.splitlines():
                    pod, _, addr = line.partition(" ")
                    out.setdefault(pod, []).append(addr)
        return out

    def pod_counts(self) -> Counter:
        return Counter({pod: len(addrs) for pod, addrs in self.pod_requests().items()})

    def save(self, node_name: str, backend: str = "nft", table: str | None = None) -> str:
        """What `iptables-<backend>-save -c` prints in the node (the harness's own view, for test oracles)."""
        argv = [f"iptables-{backend}-save", "-c"] + (["-t", table] if table else [])
        return self._exec(node_name, argv)

    def conntrack_flush(self, node_name: str) -> None:
        """Forget a node's connections, so a test's first packets are NEW again (docs/reference/lab.md §5.10)."""
        self._exec(node_name, ["conntrack", "-F"], check=False)


# where the node's kube-proxy input goes (paths in the node, on its root filesystem: docs/reference/lab.md §1)
IPTABLES_RULES = "lab/rules/kube-proxy.rules"
NFT_RULES = "lab/rules/kube-proxy.nft"
CLEANUP_RULES = "lab/rules/cleanup.rules"


def _tar(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for path, data in sorted(files.items()):
            info = tarfile.TarInfo(path)
            info.size, info.mode = len(data), 0o755
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def node_restore_text(scenario: sc.Scenario, node: sc.NodeSpec, stale: bool = False) -> dict[str, str]:
    """kube-proxy 1.28's restore input for one node (svcdoctor.model.expected), from the scenario's objects.

    stale=True: from the objects as they were before the pods in `scenario.stale_endpoints` moved.
    """
    from svcdoctor.model.expected import ProxySettings, expected_restore_text

    settings = ProxySettings(node_name=node.name, node_ips=(node.ip,), cluster_cidr=sc.CLUSTER_CIDR)
    return expected_restore_text(_cluster_model(scenario, stale), settings)


def node_nft_text(scenario: sc.Scenario, node: sc.NodeSpec, stale: bool = False) -> str:
    """kube-proxy's `nft -f` input for one node in nftables mode (1.34–1.35, svcdoctor.model.nft.expected), from
    the scenario's objects; it replaces the node's `ip kube-proxy` table in one transaction (add, delete, then
    the table anew), as kube-proxy's first sync after a restart does.

    Settings as kind's kube-proxy has them: the cluster CIDR for its local-traffic detector, the service range for
    `cluster-ips-check`, nodePortAddresses unset (every local address: `fib daddr type local`)."""
    from svcdoctor.model.nft.expected import NftProxySettings, expected_ruleset

    settings = NftProxySettings(node_name=node.name, node_ips=(node.ip,), pod_cidrs=(sc.CLUSTER_CIDR,),
                                service_cidrs=(sc.SERVICE_CIDR,))
    ruleset = expected_ruleset(_cluster_model(scenario, stale).service_ports, settings)
    return "add table ip kube-proxy\ndelete table ip kube-proxy\n" + ruleset


def _cluster_model(scenario: sc.Scenario, stale: bool):
    from svcdoctor.model.cluster import build_cluster_model

    objects = scenario.api_objects()
    if stale:
        old_ip = {p.ip: scenario.stale_endpoints[p.name] for p in scenario.pods if p.name in scenario.stale_endpoints}
        for obj in objects:
            if obj["kind"] == "EndpointSlice":
                for ep in obj["endpoints"]:
                    ep["addresses"] = [old_ip.get(a, a) for a in ep["addresses"]]
    by_kind = {kind: [o for o in objects if o["kind"] == kind] for kind in ("Service", "EndpointSlice", "Pod", "Node")}
    return build_cluster_model(by_kind["Service"], by_kind["EndpointSlice"], by_kind["Pod"], by_kind["Node"])


# kubelet's chains (docs/reference/kube-proxy-layout.md §2.1): not kube-proxy's, they stay when it changes mode
KUBELET_CHAINS = ("KUBE-KUBELET-CANARY", "KUBE-IPTABLES-HINT")
_JUMP = re.compile(r"(?:^| )-[jg] (\S+)")


def without_kube_proxy_chains(save_text: str) -> str:
    """`iptables-save` output less kube-proxy's chains and every rule in or into them: a restore input that leaves
    the node's other iptables users (kubelet, Docker's DNS) as they were."""
    def kube_proxy_chain(name: str | None) -> bool:
        return bool(name) and name.startswith("KUBE-") and name not in KUBELET_CHAINS

    kept = []
    for line in save_text.splitlines():
        if line.startswith(":") and kube_proxy_chain(line[1:].split(" ", 1)[0]):
            continue
        if line.startswith("-A "):
            jump = _JUMP.search(line)
            if kube_proxy_chain(line.split(" ", 2)[1]) or kube_proxy_chain(jump.group(1) if jump else None):
                continue
        kept.append(line)
    return "\n".join(kept) + "\n"


# --- reading rules the way a test oracle needs them ------------------------------------------------------------
_COUNTED_RULE = re.compile(r"^\[(\d+):(\d+)\] -A (\S+) (.*)$")
_COMMENT = re.compile(r'--comment "([^"]*)"|--comment (\S+)')


@dataclass(frozen=True, slots=True)
class CountedRule:
    packets: int
    bytes: int
    chain: str
    spec: str  # the rest of the line after "-A CHAIN"

    @property
    def comment(self) -> str | None:
        m = _COMMENT.search(self.spec)
        return (m.group(1) or m.group(2)) if m else None

    @property
    def target(self) -> str | None:
        m = re.search(r"-j (\S+)", self.spec)
        return m.group(1) if m else None

    @property
    def dnat_to(self) -> str | None:
        m = re.search(r"--to-destination (\S+)", self.spec)
        return m.group(1) if m else None


def counted_rules(save_text: str) -> list[CountedRule]:
    """Every `[pkts:bytes] -A CHAIN …` line of `iptables-save -c` output."""
    rules = []
    for line in save_text.splitlines():
        m = _COUNTED_RULE.match(line)
        if m:
            rules.append(CountedRule(int(m.group(1)), int(m.group(2)), m.group(3), m.group(4)))
    return rules


def dnat_packets(save_text: str, service_port_name: str) -> dict[str, int]:
    """endpoint "ip:port" -> packets on the KUBE-SEP DNAT rule of that service port (comment = the port's name)."""
    out: dict[str, int] = {}
    for rule in counted_rules(save_text):
        if rule.target == "DNAT" and rule.chain.startswith("KUBE-SEP-") and rule.comment == service_port_name:
            out[rule.dnat_to] = out.get(rule.dnat_to, 0) + rule.packets
    return out
