"""Sending on a connected UDP socket without losing a datagram to someone else's ICMP error.

Linux keeps an ICMP error (port unreachable, say) that an earlier datagram of a
connected UDP socket drew as the socket's pending error, and reports it on the
*next* ``send()``, which then fails with ECONNREFUSED and sends nothing. The
datagram in hand is fine: the error belongs to one already gone. So every
sender of this project (egress, traffic generator, reference NAT) catches
``ConnectionRefusedError`` around its send and calls ``send_again``, which
sends the same datagram once more (the pending error is cleared by the report).
Each such event is counted under its own name (``icmp_refused``), apart from
real send errors.

A downstream that really is gone draws an ICMP for every datagram, so every
other send is refused and retried: the datagrams still leave (into nothing);
the retry limit only bounds a pathological burst of errors.
"""

from __future__ import annotations

from collections.abc import Callable

RETRIES = 3


def send_again(send: Callable[[object], int], datagram: object) -> bool:
    """Send ``datagram`` again after its first ``send`` raised ConnectionRefusedError.

    True if it went out; False after RETRIES refusals in a row or another
    OSError (ENOBUFS, a network that is down): the caller counts a send error.
    """
    for _ in range(RETRIES):
        try:
            send(datagram)
            return True
        except ConnectionRefusedError:
            continue
        except OSError:
            return False
    return False
