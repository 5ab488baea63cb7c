"""Raft for DEFT's global state: a pure, deterministic core plus disk and ZeroMQ adapters.

See README.md in this folder for what is implemented and how it is tested.
``driver`` (zmq), ``storage`` (DiskStorage), ``kv`` and ``codec`` are imported
from their modules, so importing this package pulls in no I/O.
"""

from deft.runtime.consensus.config import Config as Config
from deft.runtime.consensus.core import RaftCore as RaftCore
from deft.runtime.consensus.errors import ConsensusError as ConsensusError
from deft.runtime.consensus.errors import CorruptStorage as CorruptStorage
from deft.runtime.consensus.errors import InvalidRequest as InvalidRequest
from deft.runtime.consensus.errors import InvariantViolation as InvariantViolation
from deft.runtime.consensus.errors import NotLeader as NotLeader
from deft.runtime.consensus.errors import NotReady as NotReady
from deft.runtime.consensus.errors import StorageError as StorageError
from deft.runtime.consensus.membership import Membership as Membership
from deft.runtime.consensus.messages import Entry as Entry
from deft.runtime.consensus.messages import EntryKind as EntryKind
from deft.runtime.consensus.messages import HardState as HardState
from deft.runtime.consensus.messages import Message as Message
from deft.runtime.consensus.messages import MsgType as MsgType
from deft.runtime.consensus.messages import Snapshot as Snapshot
from deft.runtime.consensus.messages import describe_entry as describe_entry
from deft.runtime.consensus.ready import ReadState as ReadState
from deft.runtime.consensus.ready import Ready as Ready
from deft.runtime.consensus.role import Role as Role
from deft.runtime.consensus.storage_api import MemoryStorage as MemoryStorage
from deft.runtime.consensus.storage_api import Storage as Storage
