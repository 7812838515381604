"""The control socket's server: how `avatar-cam ctl`, keyboard shortcuts and a second `avatar-cam` reach the daemon.

Protocol: the client connects, writes ONE request line and reads ONE response line, then both close.
    request   {"cmd": "status"|"start"|"stop"|"pause"|"resume"|"photo"|"mic"|"show"|"quit", "arg": ...}
    response  {"ok": true, "status": {...}}  or  {"ok": false, "error": "...", "hint": "..."}
One request per connection keeps the server simple. Clients are served at the same time, each on a thread of
its own, so one that sends half a line cannot hold up the others; each has `CLIENT_DEADLINE_S` to deliver its
request, at most `MAX_CLIENTS` are served at once (one more is answered "busy" at once), and garbage, oversized
(> `MAX_REQUEST` bytes) or late requests get an error response instead of taking the server down.

Where it lives: see runtime_dir.py (0700 directory, 0600 socket; a named pipe with a key on Windows, written
to the same protocol but not run in CI). The daemon holds the instance lock (instance.py) before it binds, so a
socket file found at start was left by a daemon that died without cleaning up: it is removed and bound again.
"""


from __future__ import annotations

import contextlib
import json
import logging
import os
import select
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from avatar_cam import paths
from avatar_cam.daemon.control_protocol import COMMANDS, MAX_REQUEST, error_response, read_line
from avatar_cam.daemon.runtime_dir import WINDOWS, check_length, pipe_address, pipe_authkey, runtime_dir, socket_path
from avatar_cam.errors import AvatarCamError

log = logging.getLogger(__name__)

CLIENT_DEADLINE_S = 2.0  # a client has this long to deliver its request line (ctl sends it at once)
MAX_CLIENTS = 64  # served at once; idle connections beyond this cannot crowd out `ctl status`

Handler = Callable[[str, Any], dict]


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
            return {"ok": True, "status": controller.status().to_dict(), "pid": os.getpid()}
        return {"ok": True, "status": controller.status().to_dict()}

    return handle


# --- server --------------------------------------------------------------------------------------
class ControlServer:
    """Accepts on a thread of its own ("control"), and serves each client on a thread of its own.

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
        self._slots = threading.BoundedSemaphore(MAX_CLIENTS)
        self._reading: set[socket.socket] = set()  # clients still to deliver their request line
        self._workers: set[threading.Thread] = set()
        self._clients_lock = threading.Lock()

    def start(self) -> ControlServer:
        if WINDOWS:  # pragma: no cover
            from multiprocessing.connection import Listener

            self._authkey = pipe_authkey(create=True)
            self._listener = Listener(pipe_address(), family="AF_PIPE", authkey=self._authkey)
            target = self._serve_pipe
        else:
            self._bind()
            self._wake_r, self._wake_w = os.pipe()
            target = self._serve_unix
        self._thread = threading.Thread(target=target, name="control", daemon=True)
        self._thread.start()
        log.info("control socket ready at %s", self.path or pipe_address())
        return self

    def _bind(self) -> None:
        runtime_dir(create=True)
        check_length(self.path)
        if self.path.exists() or self.path.is_symlink():
            if _answers(self.path):  # only possible if someone removed our lock file: refuse to steal the socket
                raise AvatarCamError(f"another Avatar Cam already answers on {self.path}", hint="stop it with `avatar-cam ctl quit`")
            log.warning("replacing the control socket %s left behind by a daemon that did not exit cleanly", self.path)
            self.path.unlink()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(str(self.path))
            os.chmod(self.path, 0o600)  # the 0700 directory already shuts others out while this runs
            sock.listen(socket.SOMAXCONN)
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
            if not self._slots.acquire(blocking=False):
                self._refuse_busy(conn)
                continue
            worker = threading.Thread(target=self._client_thread, args=(conn,), name="control-client", daemon=True)
            with self._clients_lock:
                self._reading.add(conn)
                self._workers.add(worker)
            worker.start()

    def _client_thread(self, conn: socket.socket) -> None:
        try:
            with conn:
                self._serve_client(conn)
        except Exception:  # whatever one client does, the others are served
            log.exception("control client failed")
        finally:
            with self._clients_lock:
                self._reading.discard(conn)
                self._workers.discard(threading.current_thread())
            self._slots.release()

    @staticmethod
    def _refuse_busy(conn: socket.socket) -> None:
        log.warning("control socket: %d clients at once; refusing one more", MAX_CLIENTS)
        with conn, contextlib.suppress(OSError):
            conn.settimeout(0.5)
            conn.sendall(json.dumps(error_response(
                f"the daemon is serving {MAX_CLIENTS} control clients already", "try again in a few seconds")).encode() + b"\n")

    def _serve_client(self, conn: socket.socket) -> None:
        deadline = time.monotonic() + CLIENT_DEADLINE_S
        try:
            try:
                line, too_long = read_line(conn, MAX_REQUEST, deadline)
            finally:
                with self._clients_lock:
                    self._reading.discard(conn)  # from here on, close() lets it finish its answer
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
        """Stop serving (after the requests in hand are answered) and remove the socket file. Idempotent."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        if WINDOWS:  # pragma: no cover - wake the blocking accept()
            from multiprocessing.connection import Client

            with contextlib.suppress(Exception):
                Client(pipe_address(), family="AF_PIPE", authkey=self._authkey).close()
        elif self._wake_w is not None:
            os.write(self._wake_w, b"x")
        if self._thread is not None:
            self._thread.join(timeout)
        with self._clients_lock:
            for conn in self._reading:  # wake clients still waiting for a request line
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
            workers = [w for w in self._workers if w is not threading.current_thread()]
        deadline = time.monotonic() + timeout
        for worker in workers:  # requests in hand (a `quit` among them) get their answer
            worker.join(max(0.0, deadline - time.monotonic()))
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
