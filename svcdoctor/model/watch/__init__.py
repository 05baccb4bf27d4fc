"""`watch`: counters sampled over time, turned into deltas, rates, resets, and a test of the observed split.

Pure: the samples come in as listings and dumps (what the nodes printed, parsed by svcdoctor/collect/sampler.py)
and leave as Frames (rendered by svcdoctor/render/watch_view.py). One module a job:

- listing: one chain as a node listed it (per address family);
- plan: which chains a service needs on each node, and the names of its endpoints;
- frame: one sample's rows, and the Frame they become;
- tracker: samples compared over time (deltas, resets, chains that come and go, the split tests);
- flows: where rules keep no counters (nftables mode, `--source conntrack`), the service's connections in a node's
  conntrack table, turned into the same rows;
- busiest: without a service, the busiest rules of full dumps;
- stats: the chi-square test.
"""
