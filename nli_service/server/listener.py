"""The shared listening socket: how many connections wait in it, and stopping without resetting any.

How many wait: the kernel's accept queue length (``TCP_INFO``'s ``tcpi_unacked`` on a
listening socket), which a sync worker uses to refuse work that would time out in the queue.

Stopping without resetting a connection: new ones are refused, those already queued are answered.

A worker that closes its copy of the listening socket while clients keep connecting leaves
some connections in the kernel's accept queue: they were accepted by the kernel (the client
has sent its request) and are reset when the last copy closes. So when the server stops
(``TABLE.draining()``, set by the master on SIGTERM), each worker first makes the listening
socket drop new connection attempts (a classic BPF socket filter dropping TCP segments with
SYN and without ACK: the client's SYN goes unanswered, it retries, and by then the socket is
closed, so it is refused; handshakes already under way still complete), then takes every
connection already queued and answers it. A worker recycled while the server keeps running
leaves the queue to its peers.
"""

from __future__ import annotations

import ctypes
import select
import socket
import struct

from nli_service.server.worker_table import TABLE

SO_ATTACH_FILTER = getattr(socket, "SO_ATTACH_FILTER", 26)  # Linux
# Classic BPF over the TCP header: (code, jump if true, jump if false, k).
_DROP_NEW_CONNECTIONS = b"".join(
    struct.pack("HBBI", *instruction)
    for instruction in (
        (0x30, 0, 0, 13),  # ld byte [13]: the TCP flags
        (0x54, 0, 0, 0x12),  # and SYN | ACK
        (0x15, 0, 1, 0x02),  # == SYN alone (a new connection)?
        (0x06, 0, 0, 0),  # yes: drop
        (0x06, 0, 0, 0xFFFFFFFF),  # no: keep the whole segment
    )
)


LAST_HANDSHAKES = 0.05  # seconds a stopping worker waits for handshakes under way to reach the queue


def server_stopping() -> bool:
    return TABLE.draining()


def queued_connection(listener: socket.socket) -> bool:
    """Whether a connection waits in the queue (after a short wait for handshakes under way)."""
    return bool(select.select([listener], [], [], LAST_HANDSHAKES)[0])


def refuse_new_connections(listener: socket.socket) -> bool:
    """Make ``listener`` drop new connection attempts (Linux); whether it could."""
    program = ctypes.create_string_buffer(_DROP_NEW_CONNECTIONS)
    fprog = struct.pack("HL", len(_DROP_NEW_CONNECTIONS) // 8, ctypes.addressof(program))
    try:
        listener.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)
    except OSError:
        return False
    return True


_TCP_INFO_SIZE = 104
_UNACKED_OFFSET = 24  # struct tcp_info: 8 bytes of u8 fields, then u32 rto, ato, snd_mss, rcv_mss, unacked


def waiting_connections(listener: socket.socket) -> int:
    """Connections in ``listener``'s accept queue (Linux; 0 where that cannot be read)."""
    try:
        info = listener.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO_SIZE)
    except (OSError, AttributeError):
        return 0
    return struct.unpack_from("I", info, _UNACKED_OFFSET)[0] if len(info) >= _UNACKED_OFFSET + 4 else 0
