"""Data path: packet records, parsing, stamping, ordering, ingress and egress."""

from deft.runtime.dataplane.packet import PACKET_DTYPE as PACKET_DTYPE
from deft.runtime.dataplane.packet import empty_batch as empty_batch
