"""DEFT runtime: rings, data plane, consensus and the node supervisor."""

from deft.runtime.errors import ConfigError as ConfigError
from deft.runtime.errors import DeftError as DeftError
from deft.runtime.errors import RingEmpty as RingEmpty
from deft.runtime.errors import RingError as RingError
from deft.runtime.errors import RingFull as RingFull
from deft.runtime.errors import WireError as WireError
