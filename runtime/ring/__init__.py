"""Shared-memory SPSC rings of numpy records, and the doorbell that wakes their consumer."""

from deft.runtime.ring.shm import cleanup_node as cleanup_node
from deft.runtime.ring.shm import leftovers as leftovers
from deft.runtime.ring.shm import shm_name as shm_name
from deft.runtime.ring.spsc import Doorbell as Doorbell
from deft.runtime.ring.spsc import Ring as Ring
