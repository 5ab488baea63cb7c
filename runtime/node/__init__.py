"""One node's supervisor and what it hosts besides its child processes.

``main.py`` is ``deft-node``; ``supervisor.py`` owns the node's shared memory, starts and restarts
the io and the NF workers (``deft.runtime.procs``, ``deft.runtime.worker``), answers ``deft-ctl``
and applies route sets; ``heartbeat.py`` beats to the controllers; ``status.py`` reads the
processes' counters; ``globalstate.py`` runs the node's member of the global-state Raft.
"""
