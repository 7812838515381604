"""The control socket's client: how `avatar-cam ctl`, keyboard shortcuts and a second `avatar-cam` talk to the
running daemon (see control_protocol.py). Runs on the caller's thread.
"""

from __future__ import annotations

import json
import socket
import time
from typing import Any

from avatar_cam import paths
from avatar_cam.daemon.control_protocol import MAX_RESPONSE, read_line
from avatar_cam.daemon.runtime_dir import WINDOWS, check_length, pipe_address, pipe_authkey, socket_path
from avatar_cam.errors import AvatarCamError, NotRunningError

NOT_RUNNING_HINT = "start it with `avatar-cam`"


def send(cmd: str, arg: Any = None, timeout: float = 5.0) -> dict:
    """Send one request to the running daemon and return its response (`{"ok": true, "status": {...}}`).

    Raises NotRunningError when nothing listens, and AvatarCamError with the daemon's message and hint when
    the daemon refuses the request (`"ok": false`) or does not answer within `timeout` seconds.
    """
    line = json.dumps({"cmd": cmd, "arg": arg}).encode() + b"\n"
    raw = _exchange_pipe(line, timeout) if WINDOWS else _exchange_unix(line, timeout)
    if not raw.strip():
        raise AvatarCamError("Avatar Cam closed the connection without answering (it may be quitting)",
                             hint=f"try again; if it keeps happening, see the log in {paths.log_dir()}")
    try:
        response = json.loads(raw)
    except ValueError:
        raise AvatarCamError(f"the daemon sent an answer that is not JSON: {raw[:200]!r}") from None
    if not isinstance(response, dict):
        raise AvatarCamError(f"the daemon sent an unexpected answer: {raw[:200]!r}")
    if not response.get("ok"):
        raise AvatarCamError(str(response.get("error") or "the daemon refused the request"), hint=response.get("hint"))
    return response


def _exchange_unix(line: bytes, timeout: float) -> bytes:
    path = socket_path()
    check_length(path)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError):
            raise NotRunningError() from None
        except OSError as exc:
            raise AvatarCamError(f"cannot reach Avatar Cam at {path}: {exc}", hint=NOT_RUNNING_HINT) from None
        try:
            sock.sendall(line)
            return read_line(sock, MAX_RESPONSE, time.monotonic() + timeout)[0]
        except TimeoutError:
            raise AvatarCamError(f"Avatar Cam did not answer within {timeout:g} s",
                                 hint=f"it may be busy or stuck; see the log in {paths.log_dir()}") from None
        except OSError as exc:
            raise AvatarCamError(f"the connection to Avatar Cam broke: {exc}",
                                 hint=f"see the log in {paths.log_dir()}") from None


def _exchange_pipe(line: bytes, timeout: float) -> bytes:  # pragma: no cover - Windows only
    from multiprocessing.connection import Client

    try:
        conn = Client(pipe_address(), family="AF_PIPE", authkey=pipe_authkey(create=False))
    except (FileNotFoundError, ConnectionRefusedError):
        raise NotRunningError() from None
    with conn:
        conn.send_bytes(line)
        if not conn.poll(timeout):
            raise AvatarCamError(f"Avatar Cam did not answer within {timeout:g} s", hint=f"see the log in {paths.log_dir()}")
        return conn.recv_bytes(MAX_RESPONSE)
