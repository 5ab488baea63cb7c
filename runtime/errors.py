"""One root error for DEFT, with specific subclasses.

Cores raise these on broken invariants or bad input; only drivers and the
supervisor catch them (to count, log, or restart).
"""


class DeftError(Exception):
    """Root of every error DEFT raises on purpose."""


class ConfigError(DeftError, ValueError):
    """A configuration value is missing or wrong; the message names file, key and problem."""


class RingError(DeftError):
    """A shared-memory ring cannot be created, attached or used."""


class RingFull(RingError):
    """push_nowait found no room for the whole batch."""


class RingEmpty(RingError):
    """pop_nowait found nothing to pop."""


class WireError(DeftError, ValueError):
    """A frame on a socket is malformed; the receiver counts and ignores it."""
