"""Native journal entries: decoded by the test's own datagram socket bound as the journal."""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

from daemon.journal import encode, entry_fields
from tests.daemon_harness import REPO


def decode(data: bytes) -> dict[str, str]:
    """journald's parser: ``KEY=value\\n`` or ``KEY\\n`` + u64 LE length + value + ``\\n``."""
    fields: dict[str, str] = {}
    i = 0
    while i < len(data):
        nl = data.index(b"\n", i)
        line = data[i:nl]
        if b"=" in line:
            key, _, value = line.partition(b"=")
            fields[key.decode()] = value.decode()
            i = nl + 1
        else:
            (size,) = struct.unpack("<Q", data[nl + 1 : nl + 9])
            fields[line.decode()] = data[nl + 9 : nl + 9 + size].decode()
            assert data[nl + 9 + size : nl + 10 + size] == b"\n"
            i = nl + 10 + size
    return fields


def test_encoding_is_binary_safe_for_newlines():
    payload = encode([("MESSAGE", "two\nlines"), ("CT_EVENT", "x=y")])
    assert payload == b"MESSAGE\n" + struct.pack("<Q", 9) + b"two\nlines\nCT_EVENT=x=y\n"
    assert decode(payload) == {"MESSAGE": "two\nlines", "CT_EVENT": "x=y"}


def test_fields_named_for_journalctl_matches():
    fields = dict(
        entry_fields(
            {
                "event": "candidate_promoted",
                "job_id": "r1",
                "release": "rel-2",
                "loss": 0.5,
                "level": "info",
                "detail": {"a": 1},
            },
            6,
        )
    )
    assert fields["CT_EVENT"] == "candidate_promoted" and fields["CT_JOB"] == "r1"
    assert fields["CT_RELEASE"] == "rel-2" and fields["PRIORITY"] == "6"
    assert fields["CT_LOSS"] == "0.5" and fields["CT_DETAIL"] == '{"a":1}'
    assert fields["MESSAGE"].startswith("candidate_promoted ")


def test_logging_sends_native_entries_when_journal_stream_matches(tmp_path: Path):
    sock_path = tmp_path / "journal.sock"
    journal = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    journal.bind(str(sock_path))
    journal.settimeout(10)
    out = tmp_path / "stderr.txt"
    code = textwrap.dedent(
        """
        import sys
        from daemon.logs import configure_logging, get_logger
        configure_logging("info", "auto")
        log = get_logger()
        log.info("job_progress", job_id="r7", step=3, loss=0.25)
        log.warning("manifest_model_mismatch", detail="line one\\nline two")
        log.info("big", blob="x" * 300000)
        log.debug("hidden")
        """
    )
    with out.open("w") as err:
        st = os.fstat(err.fileno())
        env = {
            **os.environ,
            "JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}",
            "CONTINUON_TRAINER_JOURNAL_SOCKET": str(sock_path),
        }
        done = subprocess.run(
            [sys.executable, "-c", code], stderr=err, env=env, cwd=REPO, timeout=60
        )
    assert done.returncode == 0, out.read_text()
    first = decode(journal.recv(65536))
    assert first["CT_EVENT"] == "job_progress" and first["CT_JOB"] == "r7"
    assert first["PRIORITY"] == "6" and first["CT_STEP"] == "3"
    assert first["SYSLOG_IDENTIFIER"] == "continuon-trainer"
    second = decode(journal.recv(65536))
    assert second["PRIORITY"] == "4" and second["CT_DETAIL"] == "line one\nline two"
    # Too big for one datagram: a sealed memfd passed with SCM_RIGHTS.
    msg, fds, _flags, _addr = socket.recv_fds(journal, 65536, 4)
    assert msg == b"" and len(fds) == 1
    with os.fdopen(fds[0], "rb") as f:
        big = decode(os.pread(f.fileno(), 1 << 20, 0))  # journald reads at offset 0
    assert big["CT_EVENT"] == "big" and len(big["CT_BLOB"]) == 300000
    journal.settimeout(0.5)
    try:
        extra = journal.recv(65536)
    except TimeoutError:
        extra = b""
    assert extra == b""  # the debug line is filtered, nothing else was sent
    assert out.read_text() == ""  # nothing fell back to the stream
    journal.close()


def test_lines_on_the_stream_when_journal_stream_does_not_match(tmp_path: Path):
    out = tmp_path / "stderr.txt"
    code = "from daemon.logs import *; configure_logging(); get_logger().info('gate_closed')"
    env = {**os.environ, "JOURNAL_STREAM": "1:2"}
    with out.open("w") as err:
        subprocess.run([sys.executable, "-c", code], stderr=err, env=env, cwd=REPO, timeout=60)
    assert out.read_text().startswith('<6>{"event":"gate_closed"')
