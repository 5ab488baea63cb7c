"""Primary/secondary replication of NF state (paper IV-D, VI): pure protocol cores.

``PrimaryReplicator`` and ``SecondaryReplica`` take messages and calls and
return actions (``Send``, ``WriteDecision``, ``Release``, ``Refused``); the
I/O driver that executes them is not here. See README.md in this folder.
"""

from deft.runtime.replication.actions import Action as Action
from deft.runtime.replication.actions import Refused as Refused
from deft.runtime.replication.actions import Release as Release
from deft.runtime.replication.actions import Replay as Replay
from deft.runtime.replication.actions import Send as Send
from deft.runtime.replication.actions import TakeOver as TakeOver
from deft.runtime.replication.actions import WriteDecision as WriteDecision
from deft.runtime.replication.errors import InvariantViolation as InvariantViolation
from deft.runtime.replication.errors import NotSynced as NotSynced
from deft.runtime.replication.errors import ProtocolMisuse as ProtocolMisuse
from deft.runtime.replication.errors import ReplicationError as ReplicationError
from deft.runtime.replication.errors import WindowFull as WindowFull
from deft.runtime.replication.messages import STAMP_DTYPE as STAMP_DTYPE
from deft.runtime.replication.messages import Commit as Commit
from deft.runtime.replication.messages import Delta as Delta
from deft.runtime.replication.messages import Message as Message
from deft.runtime.replication.messages import Missing as Missing
from deft.runtime.replication.messages import NeedFrom as NeedFrom
from deft.runtime.replication.messages import Packets as Packets
from deft.runtime.replication.messages import Prepare as Prepare
from deft.runtime.replication.messages import Sync as Sync
from deft.runtime.replication.messages import Vote as Vote
from deft.runtime.replication.messages import check_message as check_message
from deft.runtime.replication.messages import make_stamps as make_stamps
from deft.runtime.replication.messages import stamps_of as stamps_of
from deft.runtime.replication.primary import PrimaryReplicator as PrimaryReplicator
from deft.runtime.replication.secondary import SecondaryReplica as SecondaryReplica
