"""A photo is decoded at a bounded size: a small file that unpacks to gigabytes of pixels is refused before it
is decoded, and a large photo that is accepted is scaled down before any conversion. Memory is measured as the
peak RSS of the `avatar-cam render` process."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from helpers import run_cli_peak_rss
from skimage import data

from avatar_cam.errors import PortraitError
from avatar_cam.video.portrait import Portrait


def write_png_rgba(path: Path, width: int, height: int, paste: np.ndarray | None = None) -> Path:
    """An RGBA PNG streamed row by row (the test never holds the image): transparent, with `paste` (RGB)
    opaque in the middle. All-transparent rows compress to almost nothing."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    comp = zlib.compressobj(9)
    empty = b"\0" + bytes(width * 4)
    top = left = 0
    if paste is not None:
        top, left = (height - paste.shape[0]) // 2, (width - paste.shape[1]) // 2
    parts = []
    for y in range(height):
        if paste is not None and top <= y < top + paste.shape[0]:
            row = np.zeros((width, 4), np.uint8)
            row[left : left + paste.shape[1], :3] = paste[y - top]
            row[left : left + paste.shape[1], 3] = 255
            parts.append(comp.compress(b"\0" + row.tobytes()))
        else:
            parts.append(comp.compress(empty))
    parts.append(comp.flush())
    header = struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0)  # 8-bit RGBA
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", b"".join(parts)) + chunk(b"IEND", b""))
    return path


@pytest.fixture(scope="module")
def bomb(tmp_path_factory) -> Path:
    return write_png_rgba(tmp_path_factory.mktemp("photos") / "bomb.png", 13000, 13000)


def test_a_photo_bomb_is_refused_before_decoding(bomb, speech_wav, tmp_path):
    assert bomb.stat().st_size < 1_000_000  # 169 megapixels, under Pillow's own limit (179)
    result, peak_mb = run_cli_peak_rss("render", "--engine", "lite", "--photo", str(bomb), "--audio", str(speech_wav),
                                       "-o", str(tmp_path / "out.mp4"))
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert "13000x13000 pixels" in result.stderr and "resize it to under" in result.stderr
    assert "damaged" not in result.stderr  # the message says what is wrong, not something else
    assert peak_mb < 300, f"peak RSS {peak_mb:.0f} MB"
    assert not (tmp_path / "out.mp4").exists()


def test_the_same_refusal_in_process(bomb):
    with pytest.raises(PortraitError, match="more than a photo may"):
        Portrait.load(bomb)


def test_a_large_photo_that_is_accepted_is_scaled_before_it_is_converted(speech_wav, tmp_path):
    """6000x6000 RGBA (144 MB of pixels): decoded, scaled to 4096 px in Pillow, flattened in 8/16-bit integers."""
    face = data.astronaut()
    photo = write_png_rgba(tmp_path / "big.png", 6000, 6000, np.repeat(np.repeat(face, 8, 0), 8, 1))
    result, peak_mb = run_cli_peak_rss("render", "--engine", "lite", "--photo", str(photo), "--audio", str(speech_wav),
                                       "--size", "320x240", "--no-progress", "-o", str(tmp_path / "out.mp4"))
    assert result.returncode == 0, result.stderr
    assert "scaled to 4096 px" in result.stderr
    # The decoded photo (144 MB), Pillow's premultiplied copy and resize passes; 1.6 GB before (float32 flattening).
    assert peak_mb < 800, f"peak RSS {peak_mb:.0f} MB"


def test_ctl_photo_with_a_bomb_is_refused_and_the_daemon_keeps_answering(bomb, astronaut_png, tmp_path, monkeypatch):
    """Through the control socket: the running daemon refuses it at once and stays small and responsive."""
    import shutil

    from helpers import DaemonProcess, run_cli, short_runtime_dir

    from avatar_cam.settings import Settings

    run = short_runtime_dir()
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(run))
    Settings(photo=str(astronaut_png), engine="lite", camera_on=False).save()
    daemon = DaemonProcess(tmp_path / "daemon")
    try:
        daemon.wait_ready()
        result = run_cli("ctl", "photo", str(bomb), timeout=120)
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
        assert "13000x13000 pixels" in result.stderr
        assert daemon.status()["photo"] == str(astronaut_png)  # the current photo stays
        proc_status = Path(f"/proc/{daemon.proc.pid}/status").read_text()
        rss_mb = int(proc_status.split("VmHWM:")[1].split()[0]) / 1024  # the daemon's peak RSS
        assert rss_mb < 500, f"the daemon peaked at {rss_mb:.0f} MB"
    finally:
        daemon.kill()
        shutil.rmtree(run, ignore_errors=True)
