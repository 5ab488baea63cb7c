"""The NF worker process and its parts: one worker serves the pairs the routes make it the primary of,
and keeps replicas of those it is the secondary of.

``worker.py`` is the loop (input, NF, release, timers); ``role_plan.py`` says which roles a route set
asks of it; ``pairslot.py`` is one pair's ordering unit, NF and output buffer; ``replica.py`` wires a
pair's 2PC (``deft.runtime.replication``) to ZeroMQ; ``takeover.py`` turns a replica into a primary;
``globalbatches.py`` and ``globals_client.py`` hold batches for their global results (Raft);
``remote_input.py`` is the PULL other nodes' io processes send to; ``freeze.py``, ``bucketmove.py``
and ``forward.py`` are the worker's side of hand-overs and bucket moves. Started by the supervisor as
``python -m deft.runtime.procs worker --config PATH --index N``.
"""
