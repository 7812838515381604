"""The preview window's own process: `python -m avatar_cam.outputs.preview_window TITLE [opencv]` (started by
preview.py; `opencv` asks for OpenCV's window where the X11 one would be used, for `avatar-cam bench preview`).

Frames come in on stdin as an 8-byte header (height, width, little-endian uint32) and the BGR bytes; it prints
"shown" once the window is on the screen; it exits 0 at the end of its input or when the user closes the window,
and non-zero, with the reason on stderr, when the window cannot be (no display, the display went away).

On X11 (Linux and the BSDs; XWayland too) it draws with plain X requests through python-xlib, a dependency of
pystray there. OpenCV's own window (its Qt 5) now and then misses its window's MapNotify when the CPU is busy, and
then never paints it: on a loaded 2-core machine the preview stayed black about 1 open in 5 without a window
manager, and 3 in 40 with one. The price: ~10% of a core at 30 fps and 640x360, against ~4-5% for Qt's
shared-memory drawing. Elsewhere (Windows, macOS), or where python-xlib cannot be used, `cv2.imshow` draws.

Threads: one, the main thread: it reads the frames and owns the window.
"""

from __future__ import annotations

import os
import select
import struct
import sys
from typing import BinaryIO

import cv2
import numpy as np

HEADER = struct.Struct("<II")


def read_exactly(stream: BinaryIO, n: int) -> bytearray | None:
    """n bytes from an unbuffered stream, or None at its end."""
    buf = bytearray(n)
    view, got = memoryview(buf), 0
    while got < n:
        k = stream.readinto(view[got:])
        if not k:
            return None
        got += k
    return buf


def read_frame(stream: BinaryIO) -> np.ndarray | None:
    """The next frame from the (unbuffered) stream, or None at its end."""
    head = read_exactly(stream, HEADER.size)
    if head is None:
        return None
    h, w = HEADER.unpack(head)
    data = read_exactly(stream, h * w * 3)
    return None if data is None else np.frombuffer(data, np.uint8).reshape(h, w, 3)


class X11Window:
    """A plain X window of the frame's size; frames go up as ZPixmap images, in strips that fit a request."""

    def __init__(self, title: str):
        from Xlib import X, Xutil, display

        self.X, self.Xutil = X, Xutil
        self.display = display.Display()  # raises Xlib.error.DisplayError, which names the display
        screen = self.display.screen()
        formats = {f.depth: f.bits_per_pixel for f in self.display.display.info.pixmap_formats}
        if screen.root_depth != 24 or formats.get(24) != 32:
            raise RuntimeError(f"unsupported X visual (depth {screen.root_depth})")
        self.lsb_first = self.display.display.info.image_byte_order == X.LSBFirst
        self.size = (360, 640)
        self.window = screen.root.create_window(
            0, 0, self.size[1], self.size[0], 0, screen.root_depth, X.InputOutput, X.CopyFromParent,
            background_pixel=screen.black_pixel, event_mask=X.ExposureMask | X.StructureNotifyMask)
        self.window.set_wm_name(title)
        self.window.change_property(self.display.intern_atom("_NET_WM_NAME"), self.display.intern_atom("UTF8_STRING"),
                                    8, title.encode())
        self.window.set_wm_class("avatar-cam-preview", "Avatar Cam")
        self.delete_atom = self.display.intern_atom("WM_DELETE_WINDOW")
        self.window.set_wm_protocols([self.delete_atom])
        self.gc = self.window.create_gc()
        self.pixels: bytes | None = None
        self.mapped = False
        self.window.map()
        self.display.flush()

    def _fit(self, h: int, w: int) -> None:
        """The window takes the frame's size (fixed: a window manager may not stretch it)."""
        if (h, w) != self.size:
            self.size = (h, w)
            self.window.configure(width=w, height=h)
        self.window.set_wm_normal_hints(flags=self.Xutil.PSize | self.Xutil.PMinSize | self.Xutil.PMaxSize,
                                        min_width=w, min_height=h, max_width=w, max_height=h, width=w, height=h)

    def show(self, frame: np.ndarray) -> None:
        h, w = frame.shape[:2]
        if (h, w) != self.size or self.pixels is None:
            self._fit(h, w)
        # A pixel is 0x00RRGGBB (the pad byte is ignored): in memory B, G, R, pad on a little-endian server.
        bgra = cv2.cvtColor(frame, cv2.COLOR_BGR2BGRA)
        self.pixels = (bgra if self.lsb_first else bgra[..., ::-1]).tobytes()
        self.draw()

    def draw(self) -> None:
        if self.pixels is None or not self.mapped:
            return
        h, w = self.size
        row = w * 4
        rows = max(1, (self.display.display.info.max_request_length * 4 - 64) // row)  # one request each
        for top in range(0, h, rows):
            n = min(rows, h - top)
            self.window.put_image(self.gc, 0, top, w, n, self.X.ZPixmap, 24, 0,
                                  self.pixels[top * row:(top + n) * row])
        self.display.flush()

    def handle_events(self) -> bool:
        """Handle what the X server sent; False once the user closed the window."""
        X = self.X
        while self.display.pending_events():
            event = self.display.next_event()
            if event.type == X.MapNotify:
                self.mapped = True
            elif event.type == X.UnmapNotify:
                self.mapped = False
            elif event.type == X.Expose and event.count == 0:
                self.mapped = True
                self.draw()
            elif (event.type == X.ClientMessage and event.data[1][0] == self.delete_atom
                  or event.type == X.DestroyNotify):  # the user closed the window
                return False
        return True


def run_x11(win: X11Window, stream: BinaryIO) -> int:
    # One thread: a frame is read whole once it starts to arrive (preview.py writes each in one go, and drops
    # frames rather than queue them while this one draws).
    shown = False
    while True:
        if not win.handle_events():
            return 0
        if win.mapped and not shown:
            win.draw()
            print("shown", flush=True)
            shown = True
        # (python-xlib may hold events it read while sending: the timeout bounds how long they wait)
        ready, _, _ = select.select([win.display.fileno(), stream.fileno()], [], [], 0.25)
        if stream.fileno() in ready:
            frame = read_frame(stream)
            if frame is None:
                return 0
            win.show(frame)


def run_opencv(title: str, stream: BinaryIO) -> int:
    import cv2

    shown = False
    while (frame := read_frame(stream)) is not None:
        cv2.imshow(title, frame)
        cv2.waitKey(1)
        if not shown:
            print("shown", flush=True)
            shown = True
            continue
        try:
            if cv2.getWindowProperty(title, cv2.WND_PROP_VISIBLE) < 1:
                break
        except cv2.error:  # Qt destroyed the window the user closed
            break
    return 0


def x11_usable() -> bool:
    """Whether windows are X11 windows here, and python-xlib is installed."""
    if sys.platform in ("win32", "darwin") or not os.environ.get("DISPLAY"):
        return False
    try:
        import Xlib.display  # noqa: F401
    except ImportError:
        return False
    return True


def x11_window(title: str) -> X11Window | None:
    """An X window, or None where X11 is not how windows are made here (OpenCV's window is used then)."""
    if not x11_usable():
        return None
    try:
        return X11Window(title)
    except RuntimeError:  # an X server without 24-bit colour in 32-bit pixels
        return None


def main() -> int:
    title, stream = sys.argv[1], sys.stdin.buffer.raw  # unbuffered: select() sees every byte not read yet
    try:
        win = None if sys.argv[2:] == ["opencv"] else x11_window(title)
        return run_x11(win, stream) if win is not None else run_opencv(title, stream)
    except Exception as exc:  # noqa: BLE001 - the parent shows this line (preview.py, `_child_said`)
        print(str(exc) or type(exc).__name__, file=sys.stderr, flush=True)
        return 1


if __name__ == "__main__":
    sys.exit(main())
