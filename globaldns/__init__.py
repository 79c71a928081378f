"""globaldns: the DNS server for Istio multicluster `.global` ServiceEntry names."""

__version__ = "0.1.0"
