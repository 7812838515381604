"""The control protocol: one JSON request line, one JSON response line, then both sides close.

    request   {"cmd": "status"|"start"|"stop"|"pause"|"resume"|"photo"|"mic"|"show"|"quit", "arg": ...}
    response  {"ok": true, "status": {...}}  or  {"ok": false, "error": "...", "hint": "..."}
              (`quit` adds "pid": the daemon's process id; it ends once it has released camera and microphone)
"""

from __future__ import annotations

import socket
import time

COMMANDS = ("status", "start", "stop", "pause", "resume", "photo", "mic", "show", "quit")
MAX_REQUEST = 64 * 1024  # bytes in one request line
MAX_DISCARD = 64 * 1024 * 1024  # an oversized request is read and dropped up to this much, so the client hears why
MAX_RESPONSE = 4 * 1024 * 1024


def read_line(sock: socket.socket, limit: int, deadline: float) -> tuple[bytes, bool]:
    """Read up to the first newline. Returns (line, too_long); a too-long line is read to its end and dropped,
    up to MAX_DISCARD bytes. Raises TimeoutError at `deadline`."""
    data, dropped, too_long = bytearray(), 0, False
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        sock.settimeout(remaining)
        chunk = sock.recv(65536)
        if not chunk:
            return bytes(data), too_long
        end = chunk.find(b"\n")
        if too_long:
            dropped += len(chunk)
            if end >= 0 or dropped > MAX_DISCARD:
                return b"", True
            continue
        data += chunk if end < 0 else chunk[:end]
        if len(data) > limit:
            data.clear()
            too_long = True
            if end >= 0:
                return b"", True
        elif end >= 0:
            return bytes(data), False


def error_response(error: str, hint: str | None = None) -> dict:
    return {"ok": False, "error": error, "hint": hint}
