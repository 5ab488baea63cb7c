"""The processes of one node besides the supervisor: ingress, stamping units, NF workers, egress.

Each is started by the supervisor as ``python -m deft.runtime.procs ROLE --config PATH --index N``
and attaches to the shared objects the supervisor made (see ``deft.runtime.topology``).
"""
