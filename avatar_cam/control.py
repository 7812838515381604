"""The control socket: how `avatar-cam ctl`, keyboard shortcuts and a second `avatar-cam` talk to the daemon.

Protocol: the client connects, writes ONE request line and reads ONE response line, then both close.
    request   {"cmd": "status"|"start"|"stop"|"pause"|"resume"|"photo"|"mic"|"show"|"quit", "arg": ...}
    response  {"ok": true, "status": {...}}  or  {"ok": false, "error": "...", "hint": "..."}
One request per connection keeps the server simple: it serves clients one after another on its own thread,
gives each `CLIENT_DEADLINE_S` to deliver its request, and answers garbage, oversized (> `MAX_REQUEST` bytes)
or late requests with an error response instead of dying.

Where it lives: on Linux and the BSDs `$XDG_RUNTIME_DIR/avatar-cam/control.sock`, or `<cache dir>/run/` when
there is no usable runtime dir; on macOS platformdirs' user runtime dir. The directory is 0700 and the socket
0600, so only the user can talk to the daemon. On Windows the server is a named pipe
(`\\\\.\\pipe\\avatar-cam-USER`, through `multiprocessing.connection`); named pipes are readable by other
local users by default, so the pipe also demands an authentication key kept in the user's own runtime dir.
(The Windows transport is written to the same protocol but has not been run in CI.)

The socket doubles as the single-instance lock. A daemon first takes an exclusive `flock` on `control.lock`
beside the socket and keeps it for its whole life (the kernel drops it when the process dies, however it
dies). So of two daemons starting at once exactly one wins; the loser connects and asks the winner to show
itself. A socket file found by the winner was left by a daemon that died without cleaning up: nothing can be
listening on it (its owner would hold the lock), so it is removed and bound again.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import logging
import os
import secrets
import select
import socket
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import paths
from .errors import AvatarCamError

log = logging.getLogger(__name__)

COMMANDS = ("status", "start", "stop", "pause", "resume", "photo", "mic", "show", "quit")
MAX_REQUEST = 64 * 1024  # bytes in one request line
MAX_DISCARD = 64 * 1024 * 1024  # an oversized request is read and dropped up to this much, so the client hears why
MAX_RESPONSE = 4 * 1024 * 1024
CLIENT_DEADLINE_S = 5.0  # a client has this long to deliver its request line
WINDOWS = sys.platform == "win32"
NOT_RUNNING_HINT = "start it with `avatar-cam`"

Handler = Callable[[str, Any], dict]


class NotRunningError(AvatarCamError):
    """Nothing listens on the control socket."""

    def __init__(self) -> None:
        super().__init__("Avatar Cam is not running", hint=NOT_RUNNING_HINT)


# --- where ---------------------------------------------------------------------------------------
def runtime_dir(create: bool = False) -> Path:
    """The per-user directory that holds the socket and the lock (0700 when created here)."""
    if WINDOWS or sys.platform == "darwin":
        import platformdirs

        folder = Path(platformdirs.user_runtime_dir(paths.APP, appauthor=False))
    else:
        # Read XDG_RUNTIME_DIR ourselves: newer platformdirs fall back to a shared /tmp path (with a warning).
        xdg = os.environ.get("XDG_RUNTIME_DIR", "")
        usable = xdg and os.path.isabs(xdg) and os.path.isdir(xdg) and os.access(xdg, os.W_OK | os.X_OK)
        folder = Path(xdg) / paths.APP if usable else paths.cache_dir() / "run"
    if create:
        _private_dir(folder)
    return folder


def _private_dir(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    if WINDOWS:
        return  # the per-user profile's ACL keeps it private
    st = folder.stat()
    if st.st_uid != os.getuid():
        raise AvatarCamError(f"{folder} belongs to another user, so the control socket cannot be made private there",
                             hint="set XDG_RUNTIME_DIR to a directory of your own")
    if st.st_mode & 0o077:
        os.chmod(folder, 0o700)


def socket_path() -> Path:
    return runtime_dir() / "control.sock"


def lock_path() -> Path:
    return runtime_dir() / "control.lock"


def _pipe_address() -> str:
    return rf"\\.\pipe\avatar-cam-{getpass.getuser()}"


def _pipe_authkey(create: bool) -> bytes:
    key_file = runtime_dir(create=create) / "control.key"
    if create:
        key_file.write_bytes(secrets.token_bytes(32))
    try:
        return key_file.read_bytes()
    except FileNotFoundError:
        raise NotRunningError() from None


def _check_length(path: Path) -> None:
    if len(os.fsencode(path)) > 100:  # sun_path holds 104-108 bytes, depending on the OS
        raise AvatarCamError(f"the control socket path {path} is too long for a Unix socket",
                             hint="set XDG_RUNTIME_DIR to a shorter directory (e.g. /run/user/$(id -u))")


# --- client --------------------------------------------------------------------------------------
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
    _check_length(path)
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
            return _read_line(sock, MAX_RESPONSE, time.monotonic() + timeout)[0]
        except TimeoutError:
            raise AvatarCamError(f"Avatar Cam did not answer within {timeout:g} s",
                                 hint=f"it may be busy or stuck; see the log in {paths.log_dir()}") from None
        except OSError as exc:
            raise AvatarCamError(f"the connection to Avatar Cam broke: {exc}",
                                 hint=f"see the log in {paths.log_dir()}") from None


def _exchange_pipe(line: bytes, timeout: float) -> bytes:  # pragma: no cover - Windows only
    from multiprocessing.connection import Client

    try:
        conn = Client(_pipe_address(), family="AF_PIPE", authkey=_pipe_authkey(create=False))
    except (FileNotFoundError, ConnectionRefusedError):
        raise NotRunningError() from None
    with conn:
        conn.send_bytes(line)
        if not conn.poll(timeout):
            raise AvatarCamError(f"Avatar Cam did not answer within {timeout:g} s", hint=f"see the log in {paths.log_dir()}")
        return conn.recv_bytes(MAX_RESPONSE)


def _read_line(sock: socket.socket, limit: int, deadline: float) -> tuple[bytes, bool]:
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


# --- requests ------------------------------------------------------------------------------------
def error_response(error: str, hint: str | None = None) -> dict:
    return {"ok": False, "error": error, "hint": hint}


def answer(raw: bytes, handler: Handler) -> dict:
    """Parse one request line, run it, and return the response. Never raises."""
    try:
        request = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        return error_response(f"not a JSON request ({type(exc).__name__})",
                              'send one JSON object per line, e.g. {"cmd": "status"}')
    if not isinstance(request, dict) or not isinstance(request.get("cmd"), str):
        return error_response("a request is a JSON object with a \"cmd\" string", 'e.g. {"cmd": "status"}')
    cmd = request["cmd"]
    if cmd not in COMMANDS:
        return error_response(f"unknown command {cmd[:40]!r}", "commands: " + ", ".join(COMMANDS))
    try:
        return handler(cmd, request.get("arg"))
    except AvatarCamError as exc:
        return error_response(exc.args[0] if exc.args else str(exc), exc.hint)
    except Exception as exc:  # a bug in one command must not take the daemon down
        log.exception("control command %s failed", cmd)
        return error_response(f"{cmd} failed: {type(exc).__name__}: {exc}", f"see the log in {paths.log_dir()}")


def controller_handler(controller, on_show: Callable[[], None], on_quit: Callable[[], None]) -> Handler:
    """Map requests onto the controller. Runs on the control thread; the controller serialises its commands."""

    def text_arg(cmd: str, arg: Any, allow_none: bool = False) -> str | None:
        if arg is None and allow_none:
            return None
        if not isinstance(arg, str) or not arg or len(arg) > 4096 or "\0" in arg:
            example = "/home/me/me.jpg" if cmd == "photo" else "USB Microphone"
            raise AvatarCamError(f"{cmd} needs a {'file path' if cmd == 'photo' else 'device name'} as its \"arg\" string",
                                 hint=f'e.g. {{"cmd": "{cmd}", "arg": "{example}"}}')
        return arg

    def handle(cmd: str, arg: Any) -> dict:
        if cmd == "start":
            controller.start()
        elif cmd == "stop":
            controller.stop()
        elif cmd == "pause":
            controller.pause()
        elif cmd == "resume":
            controller.resume()
        elif cmd == "photo":
            controller.set_photo(text_arg(cmd, arg))
        elif cmd == "mic":
            controller.set_mic(text_arg(cmd, arg, allow_none=True))
        elif cmd == "show":
            log.info("asked to show itself")
            on_show()
        elif cmd == "quit":
            log.info("asked to quit")
            on_quit()
        return {"ok": True, "status": controller.status().to_dict()}

    return handle


# --- server --------------------------------------------------------------------------------------
class ControlServer:
    """Serves requests on a thread of its own ("control"), one client at a time.

    Call `start()` only while holding the `InstanceLock`; `close()` (from any other thread) stops the thread
    and removes the socket file.
    """

    def __init__(self, handler: Handler):
        self.handler = handler
        self.path = None if WINDOWS else socket_path()
        self._sock: socket.socket | None = None
        self._listener = None  # Windows
        self._authkey = b""
        self._inode: tuple[int, int] | None = None
        self._stopping = threading.Event()
        self._wake_r = self._wake_w = None  # a pipe that wakes the Unix server's select() on close
        self._thread: threading.Thread | None = None

    def start(self) -> ControlServer:
        if WINDOWS:  # pragma: no cover
            from multiprocessing.connection import Listener

            self._authkey = _pipe_authkey(create=True)
            self._listener = Listener(_pipe_address(), family="AF_PIPE", authkey=self._authkey)
            target = self._serve_pipe
        else:
            self._bind()
            self._wake_r, self._wake_w = os.pipe()
            target = self._serve_unix
        self._thread = threading.Thread(target=target, name="control", daemon=True)
        self._thread.start()
        log.info("control socket ready at %s", self.path or _pipe_address())
        return self

    def _bind(self) -> None:
        runtime_dir(create=True)
        _check_length(self.path)
        if self.path.exists() or self.path.is_symlink():
            if _answers(self.path):  # only possible if someone removed our lock file: refuse to steal the socket
                raise AvatarCamError(f"another Avatar Cam already answers on {self.path}", hint="stop it with `avatar-cam ctl quit`")
            log.warning("replacing the control socket %s left behind by a daemon that did not exit cleanly", self.path)
            self.path.unlink()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(str(self.path))
            os.chmod(self.path, 0o600)  # the 0700 directory already shuts others out while this runs
            sock.listen(16)
        except OSError as exc:
            sock.close()
            raise AvatarCamError(f"cannot create the control socket {self.path}: {exc}",
                                 hint="check that the directory is yours and writable") from None
        st = self.path.stat()
        self._sock, self._inode = sock, (st.st_dev, st.st_ino)

    def _serve_unix(self) -> None:
        while not self._stopping.is_set():
            try:
                ready = select.select([self._sock, self._wake_r], [], [])[0]
            except OSError:
                break
            if self._wake_r in ready:
                break
            try:
                conn, _ = self._sock.accept()
            except OSError:
                continue
            with conn:
                try:
                    self._serve_client(conn)
                except Exception:  # whatever one client does, the next one is served
                    log.exception("control client failed")

    def _serve_client(self, conn: socket.socket) -> None:
        deadline = time.monotonic() + CLIENT_DEADLINE_S
        try:
            line, too_long = _read_line(conn, MAX_REQUEST, deadline)
        except TimeoutError:
            response = error_response(f"no complete request line within {CLIENT_DEADLINE_S:g} s", "end the request with a newline")
        except OSError as exc:
            log.debug("control client went away: %s", exc)
            return
        else:
            if too_long:
                response = error_response(f"request larger than {MAX_REQUEST} bytes", "send one short JSON object per line")
            else:
                response = answer(line, self.handler)
        if not response["ok"]:
            log.info("control request refused: %s", response["error"])
        try:
            conn.settimeout(CLIENT_DEADLINE_S)
            conn.sendall(json.dumps(response).encode() + b"\n")
        except OSError as exc:
            log.debug("could not answer a control client: %s", exc)

    def _serve_pipe(self) -> None:  # pragma: no cover - Windows only
        while not self._stopping.is_set():
            try:
                conn = self._listener.accept()
            except Exception as exc:  # noqa: BLE001 - a client that fails authentication must not stop the server
                log.info("control client refused: %s", exc)
                continue
            with conn:
                if self._stopping.is_set() or not conn.poll(CLIENT_DEADLINE_S):
                    continue
                try:
                    response = answer(conn.recv_bytes(MAX_REQUEST), self.handler)
                except OSError:
                    response = error_response(f"request larger than {MAX_REQUEST} bytes", "send one short JSON object")
                with contextlib.suppress(OSError):
                    conn.send_bytes(json.dumps(response).encode() + b"\n")

    def close(self, timeout: float = 10.0) -> None:
        """Stop serving (after the request in hand) and remove the socket file. Idempotent."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        if WINDOWS:  # pragma: no cover - wake the blocking accept()
            from multiprocessing.connection import Client

            with contextlib.suppress(Exception):
                Client(_pipe_address(), family="AF_PIPE", authkey=self._authkey).close()
        elif self._wake_w is not None:
            os.write(self._wake_w, b"x")
        if self._thread is not None:
            self._thread.join(timeout)
        if self._listener is not None:  # pragma: no cover
            self._listener.close()
        if self._sock is not None:
            self._sock.close()
            self._remove_socket_file()
        for fd in (self._wake_r, self._wake_w):
            if fd is not None:
                os.close(fd)
        log.info("control socket closed")

    def _remove_socket_file(self) -> None:
        with contextlib.suppress(OSError):
            st = self.path.stat()
            if (st.st_dev, st.st_ino) == self._inode:  # never remove a socket that is not ours
                self.path.unlink()


def _answers(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(2.0)
        try:
            sock.connect(str(path))
        except OSError:
            return False
        return True


# --- single instance -------------------------------------------------------------------------------
class InstanceLock:
    """An exclusive lock on `control.lock`, held for the daemon's life; the OS releases it when the process dies."""

    def __init__(self) -> None:
        self.path = lock_path()
        self._file = None

    def acquire(self) -> bool:
        """Take the lock if it is free; False if another daemon holds it."""
        runtime_dir(create=True)
        f = open(self.path, "a+b")  # noqa: SIM115 - held open for the daemon's life
        try:
            if WINDOWS:  # pragma: no cover
                import msvcrt

                msvcrt.locking(f.fileno(), msvcrt.LK_NBLCK, 1)
            else:
                import fcntl

                os.chmod(self.path, 0o600)
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # BlockingIOError / PermissionError: taken
            f.close()
            return False
        self._file = f
        return True

    def release(self) -> None:
        f, self._file = self._file, None
        if f is not None:
            f.close()  # closing drops the lock; the file stays, so two daemons always lock the same inode


def claim_instance(wait_s: float = 15.0) -> InstanceLock | None:
    """Become the one daemon of this user: the held lock, or None after the running daemon was asked to show itself.

    The daemon holding the lock may still be starting (its socket not yet bound), so the request is retried for
    up to `wait_s` seconds before giving up with an error.
    """
    lock = InstanceLock()
    if lock.acquire():
        return lock
    deadline = time.monotonic() + wait_s
    while True:
        try:
            send("show", timeout=30.0)  # connected: it may still be busy opening the camera
            return None
        except NotRunningError:
            if time.monotonic() > deadline:
                break
            time.sleep(0.1)
            if lock.acquire():  # the other one exited meanwhile
                return lock
    raise AvatarCamError(f"another Avatar Cam holds {lock.path} but does not answer on its control socket",
                         hint=f"it may be stuck: see the log in {paths.log_dir()}, and end that process")
