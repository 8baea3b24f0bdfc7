"""Native systemd-journal entries, written with the journal's own datagram protocol.

When ``$JOURNAL_STREAM`` names the stream the daemon logs to (systemd sets it to
``DEVICE:INODE`` of the journal stream it connected stdout/stderr to), each log event becomes one
native entry with structured fields, so ``journalctl -u continuon-trainer CT_EVENT=...`` works:

* ``MESSAGE`` a readable line, ``PRIORITY`` the syslog level, ``SYSLOG_IDENTIFIER``;
* ``CT_EVENT`` the event name, ``CT_JOB`` the job id, ``CT_RELEASE`` the release id;
* ``CT_<KEY>`` every other field (scalars as text, the rest as compact JSON).

Protocol (systemd's ``sd_journal_sendv``, documented in systemd's "Native Journal Protocol"):
one ``AF_UNIX`` datagram to ``/run/systemd/journal/socket`` holding ``KEY=value\\n`` per field;
a value with a newline is sent binary-safe as ``KEY\\n`` + little-endian 64-bit length + value +
``\\n``. An entry too big for one datagram goes in a sealed memfd passed with ``SCM_RIGHTS``.
No library: the protocol is small and this keeps the daemon lean.
"""

from __future__ import annotations

import array
import fcntl
import json
import os
import re
import socket
import struct
from typing import Any, TextIO

SOCKET_PATH = "/run/systemd/journal/socket"
SOCKET_ENV = "CONTINUON_TRAINER_JOURNAL_SOCKET"  # tests bind their own journal here
IDENTIFIER = "continuon-trainer"
# Event-dict keys with a field name of their own; every other key becomes CT_<KEY>.
NAMED = {"event": "CT_EVENT", "job_id": "CT_JOB", "run_id": "CT_JOB", "release": "CT_RELEASE"}
SKIP = {"level", "timestamp"}  # PRIORITY and the journal's own timestamp carry these
_BAD = re.compile(r"[^A-Z0-9_]")


def stream_is_journal(stream: TextIO, env: dict[str, str] | None = None) -> bool:
    """Whether ``$JOURNAL_STREAM`` (``DEVICE:INODE``) is the file ``stream`` writes to."""
    value = (os.environ if env is None else env).get("JOURNAL_STREAM", "")
    dev, _, ino = value.partition(":")
    try:
        st = os.fstat(stream.fileno())
        return (st.st_dev, st.st_ino) == (int(dev), int(ino))
    except (OSError, ValueError, AttributeError):
        return False


def field_name(key: str) -> str:
    """A journal field name: upper case letters, digits and ``_``, not starting with ``_``."""
    return NAMED.get(key) or "CT_" + _BAD.sub("_", key.upper())[:60]


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool | int | float) or value is None:
        return json.dumps(value)
    return json.dumps(value, default=str, separators=(",", ":"))


def message(event_dict: dict[str, Any]) -> str:
    """The readable ``MESSAGE``: the event, then ``key=value`` for the other fields."""
    rest = " ".join(
        f"{k}={_text(v)}" for k, v in event_dict.items() if k not in SKIP and k != "event"
    )
    return f"{event_dict.get('event', '')} {rest}".strip()


def entry_fields(event_dict: dict[str, Any], priority: int) -> list[tuple[str, str]]:
    """The ``(FIELD, value)`` pairs of one entry."""
    fields = [
        ("MESSAGE", message(event_dict)),
        ("PRIORITY", str(priority)),
        ("SYSLOG_IDENTIFIER", IDENTIFIER),
    ]
    for key, value in event_dict.items():
        if key not in SKIP:
            fields.append((field_name(key), _text(value)))
    return fields


def encode(fields: list[tuple[str, str]]) -> bytes:
    """The datagram: ``KEY=value\\n``, or the length-prefixed form for a value with a newline."""
    out = bytearray()
    for key, value in fields:
        data = value.encode("utf-8", "replace")
        if b"\n" in data:
            out += key.encode() + b"\n" + struct.pack("<Q", len(data)) + data + b"\n"
        else:
            out += key.encode() + b"=" + data + b"\n"
    return bytes(out)


class JournalSender:
    """One unconnected datagram socket; ``send`` returns False when the journal is not there."""

    def __init__(self, path: str | None = None) -> None:
        self.path = path or os.environ.get(SOCKET_ENV) or SOCKET_PATH
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)

    def send(self, payload: bytes) -> bool:
        """Send one entry (by memfd when it is too big for a datagram)."""
        try:
            self.sock.sendto(payload, self.path)
            return True
        except OSError as exc:
            if exc.errno not in (90, 105):  # EMSGSIZE, ENOBUFS: too big for one datagram
                return False
        return self._send_memfd(payload)

    def _send_memfd(self, payload: bytes) -> bool:
        try:
            fd = os.memfd_create("journal-entry", os.MFD_ALLOW_SEALING)
        except (AttributeError, OSError):
            return False
        try:
            os.write(fd, payload)
            seals = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SEAL
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seals)  # journald takes sealed memfds only
            rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))]
            self.sock.sendmsg([], rights, 0, self.path)
            return True
        except OSError:
            return False
        finally:
            os.close(fd)
