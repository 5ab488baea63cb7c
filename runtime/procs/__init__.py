"""The entry of a node's child processes, and the io process.

Each child is started by the supervisor as ``python -m deft.runtime.procs ROLE --config PATH
--index N`` (``ROLE``: ``io`` or ``worker``; the worker itself is ``deft.runtime.worker``) and
attaches to the shared objects the supervisor made (see ``deft.runtime.topology``). The io is
``io.py`` with its parts: ``ingress.py`` (sources), ``unit.py`` (stamping units and the switch),
``egress.py`` (sinks, which workers use too) and ``standby.py`` (its hot standby).
"""
