"""Errors raised by the replication core; all subclass DeftError.

Bad *messages* never raise: they come back as a ``Refused`` action and are
counted. These errors are for callers that break the API contract (the
driver) and for states no correct run can reach.
"""

from deft.runtime.errors import DeftError


class ReplicationError(DeftError):
    """Root of the replication errors."""


class WindowFull(ReplicationError):
    """on_batch() was called while ``window`` batches are already in flight.

    The driver must check ``window_open`` and stop taking packets (the
    paper's "processing is halted during 2PC", bounded to the window).
    """


class ProtocolMisuse(ReplicationError, ValueError):
    """The driver called the core wrongly (a batch id out of sequence, a sync with a secondary attached...)."""


class InvariantViolation(ReplicationError):
    """A fact the protocol guarantees does not hold (e.g. a commit record behind the secondary's commit)."""


class NotSynced(ReplicationError):
    """take_over() on a secondary that never received a committed state: the pair had no redundancy."""
