"""Classic pcap files: the reader and writer live in ``deft.runtime.dataplane.pcap`` (the io
replays captures); re-exported here for the tools (traffic generator, tests)."""

from deft.runtime.dataplane.pcap import LINKTYPE_ETHERNET as LINKTYPE_ETHERNET
from deft.runtime.dataplane.pcap import PcapError as PcapError
from deft.runtime.dataplane.pcap import PcapReader as PcapReader
from deft.runtime.dataplane.pcap import PcapRecord as PcapRecord
from deft.runtime.dataplane.pcap import PcapWriter as PcapWriter
from deft.runtime.dataplane.pcap import read_pcap as read_pcap
from deft.runtime.dataplane.pcap import write_pcap as write_pcap
