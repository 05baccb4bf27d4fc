"""svcdoctor: read-only diagnostics for kube-proxy's Service routing."""

__version__ = "0.1.0"
API_VERSION = "svcdoctor/v1"
