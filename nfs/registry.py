"""Which NF class a ``[nf] kind`` names."""

from __future__ import annotations

import importlib

from deft.nfs.base import Context, NetworkFunction, Params
from deft.runtime.errors import ConfigError

# kind -> "module:Class"; imported lazily so a broken NF module cannot break the others.
NF_KINDS: dict[str, str] = {
    "flowcounter": "deft.nfs.flowcounter:FlowCounter",
    "nat": "deft.nfs.nat:Nat",
    "loadbalancer": "deft.nfs.loadbalancer:LoadBalancer",
    "firewall": "deft.nfs.firewall:Firewall",
    "portscan": "deft.nfs.portscan:PortScan",
}


def nf_class(kind: str) -> type[NetworkFunction]:
    if kind not in NF_KINDS:
        raise ConfigError(f"[nf] kind: unknown NF {kind!r}; known: {', '.join(sorted(NF_KINDS))}")
    module_name, class_name = NF_KINDS[kind].split(":")
    return getattr(importlib.import_module(module_name), class_name)


def make_nf(kind: str, params: Params, ctx: Context) -> NetworkFunction:
    """Build an NF; its constructor validates ``params`` and raises ConfigError naming the key."""
    nf = nf_class(kind)(params, ctx)
    params.check_unknown()
    return nf
