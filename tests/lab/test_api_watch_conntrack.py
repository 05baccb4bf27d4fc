"""`svcdoctor watch --via api --source conntrack` against the stand-in API server: each sample lists conntrack in
each node's kube-proxy pod over `pods/exec`, which the stand-in runs in the lab node container. The pods have no
shell (as distroless images have none), so each `conntrack -L` is its own exec, argv only
(svcdoctor/collect/conntrack_reads.py ConntrackSeries); tests/lab/test_watch_conntrack_lab.py checks the docker
door."""

from __future__ import annotations

import time

from . import scenario as sc
from .standin_exec import SHELLS
from .test_api_watch import ApiWatch, standin  # noqa: F401 - standin: the fixture (kube-proxy pods without a shell)
from .test_watch_conntrack_lab import deltas
from .test_watch_lab import sample_time, served_between


def test_through_the_api_each_conntrack_listing_is_its_own_exec(lab, standin):  # noqa: F811 - the fixture
    server, kubeconfig = standin
    pods_before = lab.pod_counts()
    with ApiWatch(kubeconfig, "svc-clusterip", "--count", "2", "--interval", "3", "--source", "conntrack") as watch:
        first = watch.sample()
        answers = lab.hit("net-pod", "http://10.200.1.10:9000/", 15)
        done = time.time()
        second = watch.sample()
        code, err = watch.finish()
    served = served_between(pods_before, lab.pod_counts())
    assert code == 0, err
    assert "ERROR" not in answers and sum(served.values()) == 15
    assert done <= sample_time(second), "the requests took longer than the interval: the test cannot tell"
    assert first["source"] == "conntrack" and all(r["deltaConnections"] == 0 for r in first["rows"])
    assert deltas(second, sc.CONTROL_PLANE) == served
    execs = [r.query["command"] for r in server.requests if r.path.endswith("/exec")]
    listings = [c for c in execs if c.startswith("conntrack ")]
    assert listings and all(c == "conntrack -L -f ipv4 -p tcp --orig-port-dst 9000 -o extended,id" for c in listings)
    assert not any(c.split()[0] in SHELLS for c in execs)
