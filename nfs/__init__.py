"""Network functions: pure classes over packet batches (see ``deft.nfs.base``)."""

from deft.nfs.base import Context as Context
from deft.nfs.base import FlowTable as FlowTable
from deft.nfs.base import NetworkFunction as NetworkFunction
from deft.nfs.base import Params as Params
from deft.nfs.registry import make_nf as make_nf
from deft.nfs.registry import nf_class as nf_class
from deft.nfs.registry import NF_KINDS as NF_KINDS
