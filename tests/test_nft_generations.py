"""Every generation of kube-proxy's nftables layout as svcdoctor models it (svcdoctor/model/nft/expected.py with
NftProxySettings.generation), checked against kube-proxy's own expected rulesets (pkg/proxy/nftables/proxier_test.go
of each generation; docs/explanation/kube-proxy-nftables.md, "Generations"):

* TestOverallNFTablesRules (01, five layouts), every step of TestSyncProxyRulesRepeated (12), the state after
  TestSyncProxyRulesStartup (13) and TestBadIPs (14): the generated ruleset equals kube-proxy's expected text
  (the same declarations, the same rules per chain in order, the same elements per set or map), and every hashed
  name in both is kube-proxy's hash (names.py).
* Each generated ruleset loads into a real kernel (`nft -f` in a network namespace) and lists back, as JSON and
  as text, the same as kube-proxy's own expected text loaded the same way (the cases' listed*.json/.txt).
* The 01 services traced (model/nft_trace.py) through the kernel's listing of the generated table, JSON and text,
  and through the listing of kube-proxy's own table: every probe gets the answer written below for its generation.
  The cases hold no flow list for 01 (kube-proxy's test runs none), so the probes and their answers are this
  file's, one per service address and kind of client, from the services of the test.

The Services and EndpointSlices are written here as API objects from each case's services.md. Without the
reference cases (SVCDOCTOR_NFT_CASES) these tests skip.
"""

from __future__ import annotations

import json

import pytest
from nft_cases import (
    CASES,
    HASHED_NAME,
    TRACER_NODE_IPS,
    endpoint_slice,
    ep,
    eport,
    fake_settings,
    kernel_listings,
    needs_cases,
    port,
    ruleset_parts,
    service,
    trace_answer,
)

from svcdoctor.model.cluster import build_cluster_model
from svcdoctor.model.nft import NftRuleset, kube_proxy_tables, read_listing
from svcdoctor.model.nft.expected import GENERATIONS, NftProxier, NftProxySettings, expected_ruleset
from svcdoctor.model.nft.layout import GENERATIONS as LISTED_GENERATIONS
from svcdoctor.model.nft.layout import generation as listed_generation
from svcdoctor.model.nft.names import parse_name
from svcdoctor.model.nft_trace import trace_nft_packet

LATER = ("v1.30-1.33", "v1.34-1.35", "v1.36")  # the generations of the 12, 13 and 14 cases


def settings_for(generation: str) -> NftProxySettings:
    """NewFakeProxier of that generation (each case's services.md): the two oldest test files name the node
    `test-hostname`, match node ports on every local address and (v1.29) have no service CIDR."""
    if generation == "v1.29-alpha":
        return fake_settings(generation=generation, node_name="test-hostname", node_port_addresses=(),
                             service_cidrs=False)
    if generation == "v1.30-early":
        return fake_settings(generation=generation, node_name="test-hostname", node_port_addresses=())
    return fake_settings(generation=generation)


def node_names(settings: NftProxySettings) -> tuple[str | None, str | None]:
    """(this node, another node) as the test's endpoints name them: from v1.36 every endpoint has a nodeName
    (hairpin-connections holds local endpoints only); before, most have none (not local)."""
    if settings.generation == "v1.36":
        return settings.node_name, "other-node"
    return None, None


def assert_same_ruleset(mine: str, theirs: str, what: str) -> None:
    a, b = ruleset_parts(mine), ruleset_parts(theirs)
    problems = [f"declaration only in {'svcdoctor' if d in a[0] else 'kube-proxy'}'s: {d}" for d in a[0] ^ b[0]]
    for chain in sorted(set(a[1]) | set(b[1])):
        if a[1].get(chain) != b[1].get(chain):
            problems.append(f"chain {chain}:\n  svcdoctor  {a[1].get(chain)}\n  kube-proxy {b[1].get(chain)}")
    for name in sorted(set(a[2]) | set(b[2])):
        if a[2].get(name) != b[2].get(name):
            problems.append(f"elements of {name}:\n  svcdoctor  {a[2].get(name)}\n  kube-proxy {b[2].get(name)}")
    assert not problems, f"{what}:\n" + "\n".join(problems)


def assert_names_verified(*texts: str) -> int:
    """Every hashed chain and set name is base32(sha256(base)) of its own base (names.py)."""
    names = {n for text in texts for n in HASHED_NAME.findall(text)}
    bad = [n for n in names if parse_name(n) is None or parse_name(n).verified is not True]
    assert not bad, bad
    return len(names)


def listed_table(text: str) -> NftRuleset:
    (table,) = kube_proxy_tables(read_listing(text))
    return table


def assert_same_listing(mine: NftRuleset, theirs: NftRuleset, what: str) -> None:
    """The kernel's listing of the generated table against its listing of kube-proxy's text (chain order aside)."""
    assert set(mine.chains) == set(theirs.chains), what
    for name, chain in mine.chains.items():
        assert [r.text for r in chain.rules] == [r.text for r in theirs.chains[name].rules], f"{what}: {name}"
    assert set(mine.sets) == set(theirs.sets), what
    for name, nset in mine.sets.items():
        assert sorted(map(repr, nset.elements)) == sorted(map(repr, theirs.sets[name].elements)), f"{what}: {name}"


def check_case(text: str, folder, suffix: str, generation: str) -> tuple[NftRuleset, NftRuleset]:
    """The generated text against the folder's ruleset<suffix>.nft; loaded, listed and compared with
    listed<suffix>.json/.txt. The kernel's two listings of the generated table, JSON first."""
    theirs = (folder / f"ruleset{suffix}.nft").read_text()
    assert_same_ruleset(text, theirs, f"{folder.name} {suffix}")
    assert assert_names_verified(text, theirs)
    listed = []
    for form, listing in zip(("json", "txt"), kernel_listings(text, "IPv4")):
        mine = listed_table(listing)
        assert_same_listing(mine, listed_table((folder / f"listed{suffix}.{form}").read_text()),
                            f"{folder.name}{suffix} ({form})")
        assert listed_generation(mine) == generation
        assert all(parse_name(n) is None or parse_name(n).verified for n in [*mine.chains, *mine.sets])
        listed.append(mine)
    return listed[0], listed[1]


def ports_of(services: list[dict], slices: list[dict]):
    model = build_cluster_model(services, slices)
    assert not model.warnings, model.warnings
    return model.service_ports


# --- 01: TestOverallNFTablesRules --------------------------------------------------------------------------
def overall_objects(settings: NftProxySettings) -> tuple[list[dict], list[dict]]:
    here, other = node_names(settings)
    svcs = [
        service("ns1", "svc1", "172.30.0.41", [port()]),
        service("ns2", "svc2", "172.30.0.42", [port(node_port=3001)], "LoadBalancer", ["1.2.3.4"],
                externalTrafficPolicy="Local", externalIPs=["192.168.99.22"], healthCheckNodePort=30000),
        service("ns3", "svc3", "172.30.0.43", [port(node_port=3003)], "NodePort"),
        service("ns4", "svc4", "172.30.0.44", [port()], "NodePort", externalIPs=["192.168.99.33"]),
        service("ns5", "svc5", "172.30.0.45", [port(node_port=3002)], "LoadBalancer", ["5.6.7.8"],
                externalTrafficPolicy="Cluster", healthCheckNodePort=30000,
                loadBalancerSourceRanges=[" 203.0.113.0/25"], sessionAffinity="ClientIP",
                sessionAffinityConfig={"clientIP": {"timeoutSeconds": 10800}}),
        service("ns6", "svc6", "172.30.0.46", [port()], "ClusterIP"),
    ]
    slices = [
        endpoint_slice("ns1", "svc1", [ep("10.180.0.1", here)], [eport()]),
        endpoint_slice("ns2", "svc2", [ep("10.180.0.2", other)], [eport()]),
        endpoint_slice("ns3", "svc3", [ep("10.180.0.3", here)], [eport()]),
        # 10.180.0.5 is on this node in every version of the test
        endpoint_slice("ns4", "svc4", [ep("10.180.0.4", other), ep("10.180.0.5", settings.node_name)], [eport()]),
        endpoint_slice("ns5", "svc5", [ep("10.180.0.3", here)], [eport()]),
    ]
    return svcs, slices


POD, CLIENT, BLOCKED, NODE = "10.0.0.2", "203.0.113.2", "203.0.113.130", "192.168.0.2"
SVC4_BOTH = "10.180.0.4:80, 10.180.0.5:80"

# (name, source, destination, port, protocol, answer, masquerade, {generation: (answer, masquerade)})
PROBES = [
    ("pod to svc1's cluster IP", POD, "172.30.0.41", 80, "tcp", "10.180.0.1:80", False, {}),
    ("off-cluster client to svc1's cluster IP is masqueraded", CLIENT, "172.30.0.41", 80, "tcp", "10.180.0.1:80",
     True, {}),
    ("hairpin: svc1's endpoint to svc1", "10.180.0.1", "172.30.0.41", 80, "tcp", "10.180.0.1:80", True, {}),
    # cluster-ips-check arrived with PR #122614: before it nothing answers another port of a cluster IP
    ("pod to another port of svc1's cluster IP", POD, "172.30.0.41", 443, "tcp", "REJECT", False,
     {"v1.29-alpha": ("", False)}),
    ("pod to an unallocated address of the service CIDR", POD, "172.30.0.99", 80, "tcp", "DROP", False,
     {"v1.29-alpha": ("", False)}),
    ("off-cluster client to svc2's LB IP (Local policy, no local endpoint)", CLIENT, "1.2.3.4", 80, "tcp", "DROP",
     False, {}),
    ("pod to svc2's LB IP is short-circuited", POD, "1.2.3.4", 80, "tcp", "10.180.0.2:80", False, {}),
    # up to 1.33 the no-endpoint check on output ran before DNAT (priority -110 / -101) and saw the LB IP; from
    # 1.34 (PR #132456) it runs after, and the node's own traffic is short-circuited to the cluster chain
    ("node to svc2's LB IP", NODE, "1.2.3.4", 80, "tcp", "10.180.0.2:80", True,
     {"v1.29-alpha": ("DROP", False), "v1.30-early": ("DROP", False), "v1.30-1.33": ("DROP", False)}),
    ("off-cluster client to svc2's node port (no local endpoint)", CLIENT, NODE, 3001, "tcp", "DROP", False, {}),
    ("off-cluster client to svc3's node port", CLIENT, NODE, 3003, "tcp", "10.180.0.3:80", True, {}),
    # node ports on every local address (no nodePortAddresses) in the two oldest tests, 192.168.0.2/32 after
    ("off-cluster client to svc3's node port on the node's second address", CLIENT, "192.168.1.2", 3003, "tcp",
     "", False, {"v1.29-alpha": ("10.180.0.3:80", True), "v1.30-early": ("10.180.0.3:80", True)}),
    ("localhost to svc3's node port (not supported)", "127.0.0.1", "127.0.0.1", 3003, "tcp", "", False, {}),
    ("off-cluster client to svc4's external IP", CLIENT, "192.168.99.33", 80, "tcp", SVC4_BOTH, True, {}),
    # from 1.36 only local endpoints are in hairpin-connections: 10.180.0.4 is on another node
    ("svc4's endpoint 10.180.0.4 to svc4", "10.180.0.4", "172.30.0.44", 80, "tcp", SVC4_BOTH, True,
     {"v1.36": (SVC4_BOTH, False)}),
    ("allowed client to svc5's LB IP", CLIENT, "5.6.7.8", 80, "tcp", "10.180.0.3:80", True, {}),
    ("client outside loadBalancerSourceRanges to svc5's LB IP", BLOCKED, "5.6.7.8", 80, "tcp", "DROP", False, {}),
    ("client outside loadBalancerSourceRanges to svc5's node port (not firewalled)", BLOCKED, NODE, 3002, "tcp",
     "10.180.0.3:80", True, {}),
    ("pod to svc6 (no endpoints)", POD, "172.30.0.46", 80, "tcp", "REJECT", False, {}),
]


def trace_probes(table: NftRuleset, generation: str, form: str) -> list[str]:
    failures = []
    for name, src, dst, dport, proto, answer, masq, changed in PROBES:
        want = changed.get(generation, (answer, masq))
        result = trace_nft_packet(table, src, dst, dport, proto, TRACER_NODE_IPS)
        if result.uncertain:
            failures.append(f"{form}: {name}: uncertain rules {result.uncertain}")
        got = (trace_answer(result), result.masquerade)
        if got != want:
            failures.append(f"{form}: {name}: got {got}, expected {want}")
    return failures


@needs_cases
def test_every_generation_has_its_overall_case():
    assert set(GENERATIONS) < set(LISTED_GENERATIONS)  # the layouts the listing reader tells apart (layout.py)
    assert sorted(GENERATIONS) == sorted(p.name.removeprefix("01-overall-") for p in CASES.glob("01-overall-*"))
    assert all(json.loads((CASES / f"01-overall-{g}" / "flows.json").read_text())["flows"] == [] for g in GENERATIONS)


@needs_cases
@pytest.mark.parametrize("generation", GENERATIONS)
def test_01_overall_ruleset_of_each_generation(generation):
    settings = settings_for(generation)
    text = expected_ruleset(ports_of(*overall_objects(settings)), settings)
    folder = CASES / f"01-overall-{generation}"
    mine_json, mine_text = check_case(text, folder, "", generation)
    failures = trace_probes(mine_json, generation, "svcdoctor's, json") + trace_probes(mine_text, generation,
                                                                                        "svcdoctor's, text")
    for form in ("json", "txt"):
        failures += trace_probes(listed_table((folder / f"listed.{form}").read_text()), generation,
                                 f"kube-proxy's, {form}")
    assert not failures, "\n".join(failures)


# --- 12: TestSyncProxyRulesRepeated ------------------------------------------------------------------------
def repeated_steps(settings: NftProxySettings):
    """The test's ten syncs: (objects, stale chains aged before the sync)."""
    here, _ = node_names(settings)
    svc1 = service("ns1", "svc1", "172.30.0.41", [port()])
    svc2 = service("ns2", "svc2", "172.30.0.42", [port("p8080", 8080)])
    svc3 = service("ns3", "svc3", "172.30.0.43", [port()])
    svc4 = service("ns4", "svc4", "172.30.0.44", [port()])
    slice1 = endpoint_slice("ns1", "svc1", [ep("10.0.1.1", here)], [eport()])
    slice2 = endpoint_slice("ns2", "svc2", [ep("10.0.2.1", here)], [eport("p8080", 8080)])
    slice4 = endpoint_slice("ns4", "svc4", [ep("10.0.4.1", here)], [eport()])

    def slice3(*ips):
        return endpoint_slice("ns3", "svc3", [ep(ip, here) for ip in ips], [eport()])

    return [
        (([svc1, svc2], [slice1, slice2]), False),  # initial
        (([svc1, svc2, svc3], [slice1, slice2, slice3("10.0.3.1")]), False),  # add svc3
        (([svc1, svc3], [slice1, slice3("10.0.3.1")]), False),  # delete svc2: its chains flushed, kept
        (([svc1, svc3], [slice1, slice3("10.0.3.1")]), True),  # ageStaleChains(): deleted
        (([svc1, svc3, svc4], [slice1, slice3("10.0.3.1")]), False),  # svc4 without endpoints
        (([svc1, svc3, svc4], [slice1, slice3("10.0.3.1"), slice4]), False),  # svc4's endpoint
        (([svc1, svc3, svc4], [slice1, slice3("10.0.3.2"), slice4]), False),  # svc3: 10.0.3.1 -> 10.0.3.2
        (([svc1, svc3, svc4], [slice1, slice3("10.0.3.2", "10.0.3.3"), slice4]), True),  # aged; + 10.0.3.3
        (([svc1, svc3, svc4], [slice1, slice3(), slice4]), False),  # svc3 emptied
        (([svc1, svc3, svc4], [slice1, slice3("10.0.3.2", "10.0.3.3"), slice4]), False),  # restored
    ]


@needs_cases
@pytest.mark.parametrize("generation", LATER)
def test_12_sync_repeated_every_step(generation):
    folder = CASES / f"12-sync-repeated-{generation}"
    files = [s["file"] for s in json.loads((folder / "flows.json").read_text())["meta"]["steps"]]
    settings = settings_for(generation)
    steps = repeated_steps(settings)
    assert len(files) == len(steps) == 10
    proxier = NftProxier(settings)
    for file, ((svcs, slices), aged) in zip(files, steps):
        text = proxier.sync(ports_of(svcs, slices), stale_chains_aged=aged)
        check_case(text, folder, file.removeprefix("ruleset").removesuffix(".nft"), generation)


def test_stale_chains_stay_flushed_until_aged():
    """A chain kube-proxy stops using is flushed by the sync and deleted only by one a second later."""
    settings = fake_settings()
    with_svc2 = ports_of([service("ns1", "svc1", "172.30.0.41", [port()]),
                          service("ns2", "svc2", "172.30.0.42", [port()])],
                         [endpoint_slice("ns1", "svc1", [ep("10.0.1.1")], [eport()]),
                          endpoint_slice("ns2", "svc2", [ep("10.0.2.1")], [eport()])])
    proxier = NftProxier(settings)
    first = ruleset_parts(proxier.sync(with_svc2))
    svc2_chains = {c for c in HASHED_NAME.findall("\n".join(first[0])) if "/svc2/" in c}
    assert len(svc2_chains) == 2 and all(c in first[1] for c in svc2_chains)  # service and endpoint chain
    flushed = ruleset_parts(proxier.sync(with_svc2[:1]))
    assert all(f"add chain ip kube-proxy {c}" in flushed[0] and c not in flushed[1] for c in svc2_chains)
    assert ruleset_parts(proxier.sync(with_svc2[:1])) == flushed  # a quick resync keeps them
    aged = ruleset_parts(proxier.sync(with_svc2[:1], stale_chains_aged=True))
    assert not any(c in line for c in svc2_chains for line in aged[0])
    assert aged[0] | {f"add chain ip kube-proxy {c}" for c in svc2_chains} == flushed[0]


# --- 13: TestSyncProxyRulesStartup -------------------------------------------------------------------------
@needs_cases
@pytest.mark.parametrize("generation", LATER)
def test_13_sync_startup(generation):
    """A proxier started over a table left by an earlier run (preload.nft, as the kernel listed it): its first
    sync's table. Whatever of the old table is not used any more, kube-proxy flushes or deletes."""
    folder = CASES / f"13-sync-startup-{generation}"
    settings = settings_for(generation)
    here, _ = node_names(settings)
    svcs = [service("ns1", "svc1", "172.30.0.41", [port()]),
            service("ns2", "svc2", "172.30.0.42", [port("p8080", 8080)]),
            service("ns3", "svc3", "172.30.0.43", [port()])]
    slices = [endpoint_slice("ns1", "svc1", [ep("10.0.1.1", here), ep("10.0.1.2", here)], [eport()]),
              endpoint_slice("ns2", "svc2", [ep("10.0.2.1", here)], [eport("p8080", 8080)])]
    preloaded = listed_table((folder / "listed.preload.json").read_text())
    assert any("/" in name for name in preloaded.chains)  # the earlier run's service chains
    text = NftProxier(settings, existing_chains=preloaded.chains).sync(ports_of(svcs, slices))
    check_case(text, folder, "", generation)


# --- 14: TestBadIPs ----------------------------------------------------------------------------------------
@needs_cases
@pytest.mark.parametrize("generation", LATER)
def test_14_bad_ips_are_read_as_kube_proxy_reads_them(generation):
    """Addresses with leading zeros (ParseIPSloppy): 172.30.0.041 is 172.30.0.41, 203.0.113.000/025 is
    203.0.113.0/25."""
    settings = settings_for(generation)
    here, _ = node_names(settings)
    svcs = [service("ns1", "svc1", "172.30.0.041", [port(node_port=3001)], "LoadBalancer", ["1.2.3.004"],
                    externalIPs=["192.168.099.022"], loadBalancerSourceRanges=["203.0.113.000/025"])]
    slices = [endpoint_slice("ns1", "svc1", [ep("10.180.00.001", here)], [eport()])]
    check_case(expected_ruleset(ports_of(svcs, slices), settings), CASES / f"14-bad-ips-{generation}", "",
               generation)


# --- IPv6: no reference ruleset, but the same syntax questions ----------------------------------------------
V6_PROBES = [
    ("pod to svc1's cluster IP", "fd00:10::2", "fd00:172:30::41", 80, "[fd00:10:180::1]:80, [fd00:10:180::2]:80",
     False),
    ("hairpin: svc1's local endpoint to svc1", "fd00:10:180::1", "fd00:172:30::41", 80,
     "[fd00:10:180::1]:80, [fd00:10:180::2]:80", True),
    ("off-cluster client to svc2's node port (Local policy, local endpoint)", "2001:db8:114::5", "2001:db8::1", 3001,
     "[fd00:10:180::3]:80", False),
    ("allowed client to svc5's LB IP", "2001:db8:113::5", "2001:db8:99::8", 80, "[fd00:10:180::5]:80", True),
    ("client outside loadBalancerSourceRanges to svc5's LB IP", "2001:db8:114::5", "2001:db8:99::8", 80, "DROP",
     False),
]


@pytest.mark.parametrize("node_port_addresses", [(), ("2001:db8::1/128",)], ids=["all-local", "nodeport-ips"])
@pytest.mark.parametrize("generation", GENERATIONS)
def test_ipv6_table_of_each_generation_loads_and_traces(generation, node_port_addresses):
    """`ip6 kube-proxy` in every layout (`dnat ip6 addr . port to … map`, `ip6 saddr != { … }`, the ip6 hairpin
    set) is accepted by nft and the kernel, and read back and traced as JSON and as text."""
    settings = fake_settings("IPv6", node_port_addresses, generation=generation)
    v6 = {"ipFamilies": ["IPv6"]}
    svcs = [
        service("ns1", "svc1", "fd00:172:30::41", [port()], **v6),
        service("ns2", "svc2", "fd00:172:30::42", [port(node_port=3001)], "LoadBalancer", ["2001:db8:99::4"],
                externalTrafficPolicy="Local", **v6),
        service("ns5", "svc5", "fd00:172:30::45", [port(node_port=3002)], "LoadBalancer", ["2001:db8:99::8"],
                loadBalancerSourceRanges=["2001:db8:113::/64"], sessionAffinity="ClientIP", **v6),
    ]
    slices = [
        endpoint_slice("ns1", "svc1", [ep("fd00:10:180::1", "test-node"), ep("fd00:10:180::2", "other-node")],
                       [eport()], "IPv6"),
        endpoint_slice("ns2", "svc2", [ep("fd00:10:180::3", "test-node")], [eport()], "IPv6"),
        endpoint_slice("ns5", "svc5", [ep("fd00:10:180::5", "other-node")], [eport()], "IPv6"),
    ]
    text = expected_ruleset(ports_of(svcs, slices), settings)
    assert "add table ip6 kube-proxy" in text and " ip " not in text
    assert assert_names_verified(text)
    failures = []
    for form, listing in zip(("json", "text"), kernel_listings(text, "IPv6")):
        table = listed_table(listing)
        for name, src, dst, dport, answer, masq in V6_PROBES:
            result = trace_nft_packet(table, src, dst, dport, "tcp", TRACER_NODE_IPS)
            got = (trace_answer(result), result.masquerade, result.uncertain)
            if got != (answer, masq, []):
                failures.append(f"{form}: {name}: got {got}, expected {(answer, masq)}")
    assert not failures, "\n".join(failures) + "\n" + text
    # the layout is told apart from what the listing holds, whatever nodePortAddresses made of `nodeport-ips`
    assert {listed_generation(listed_table(listing)) for listing in kernel_listings(text, "IPv6")} == {generation}


def test_leading_zero_addresses_are_read_as_kube_proxy_reads_them():
    """ParseIPSloppy: leading zeros are decimal; anything else that is not an address still makes the object
    malformed."""
    (sp,) = ports_of([service("ns1", "svc1", "172.30.0.041", [port()], externalIPs=["192.168.099.022"])],
                     [endpoint_slice("ns1", "svc1", [ep("10.180.00.001")], [eport()])])
    assert (sp.cluster_ips, sp.external_ips, sp.endpoints[0].ip) == (["172.30.0.41"], ["192.168.99.22"],
                                                                      "10.180.0.1")
    for bad in ("172.30.0.256", "172.30.0.4.1", "172.30.0", "172.30.0.x"):
        model = build_cluster_model([service("ns1", "svc1", bad, [port()])], [])
        assert not model.service_ports and bad in model.warnings[0]


def test_unknown_generation_is_refused():
    with pytest.raises(ValueError, match="v1.36"):
        fake_settings(generation="v1.99")
