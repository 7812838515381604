"""Draw Avatar Cam's tray icons with Pillow: `python tray_assets/make_icons.py` rewrites the files next to it.

One rounded badge per state, its colour saying the state at a glance, with a white glyph:
idle (grey, camera), live (green, camera; also used while silent), paused (amber, pause bars), error (red, "!").

Sharp at every size: each size is drawn on its own, with every edge computed in that size's pixels and
rounded to the pixel grid, at 8x, then box-filtered down. Straight edges land exactly on pixel boundaries
(crisp); only curves get anti-aliased. Scaling one large drawing down instead would blur 16 px icons.

Formats:
- `avatar-cam-<state>-<size>.png` at 16, 22, 24, 32, 48 and 64 px: what the tray uses on every OS (pystray
  takes a Pillow image; tray.py picks the size that fits the backend).
- `avatar-cam-<state>.ico`: multi-size Windows icons (16-256 px, each size drawn, not rescaled), and
  `avatar-cam.ico` (the live design) for shortcuts and the Start menu.
- macOS: the same colour PNGs, not black "template" images. A template image is recoloured by the system to
  match the menu bar, which would erase the one thing the icon says (live / paused / error).
"""

from __future__ import annotations

import sys
from pathlib import Path

from PIL import Image, ImageDraw

HERE = Path(__file__).resolve().parent
SIZES = (16, 22, 24, 32, 48, 64)
ICO_SIZES = (16, 20, 24, 32, 40, 48, 64, 256)
SUPERSAMPLE = 8

# state: (badge colour, darker rim, glyph)
STATES: dict[str, tuple[tuple[int, int, int], tuple[int, int, int], str]] = {
    "idle": ((107, 114, 128), (75, 85, 99), "camera"),
    "live": ((22, 163, 74), (21, 128, 61), "camera"),
    "paused": ((217, 119, 6), (180, 83, 9), "pause"),
    "error": ((220, 38, 38), (153, 27, 27), "alert"),
}
WHITE = (255, 255, 255, 255)


def draw_icon(state: str, size: int) -> Image.Image:
    """The `state` icon at `size` x `size` px, RGBA."""
    fill, rim, glyph = STATES[state]
    ss = SUPERSAMPLE

    def px(fraction: float) -> int:
        """A position as a fraction of the icon, snapped to this size's pixel grid, in supersampled units."""
        return round(fraction * size) * ss

    big = Image.new("RGBA", (size * ss, size * ss), (0, 0, 0, 0))
    d = ImageDraw.Draw(big)
    rim_w = max(1, round(size / 24)) * ss
    radius = round(size * 0.22) * ss
    d.rounded_rectangle((0, 0, size * ss - 1, size * ss - 1), radius=radius, fill=(*rim, 255))
    d.rounded_rectangle((rim_w, rim_w, size * ss - 1 - rim_w, size * ss - 1 - rim_w), radius=max(radius - rim_w, 0),
                        fill=(*fill, 255))
    if glyph == "camera":
        # A video camera: body, then the lens hood widening to the right. A 1 px gap between them at every size.
        top, bottom = px(0.31), px(0.69)
        body_right = px(0.63)
        d.rounded_rectangle((px(0.16), top, body_right - 1, bottom - 1), radius=max(ss, round(size * 0.06) * ss), fill=WHITE)
        hood_left = body_right + max(1, round(size / 32)) * ss
        d.polygon([(hood_left, px(0.44)), (px(0.85), px(0.31)), (px(0.85), px(0.69) - 1), (hood_left, px(0.56) - 1)], fill=WHITE)
    elif glyph == "pause":
        bar = max(2, round(size * 0.14)) * ss
        gap = max(2, round(size * 0.12)) * ss
        left = (size * ss - 2 * bar - gap) // ss // 2 * ss
        for x in (left, left + bar + gap):
            d.rectangle((x, px(0.27), x + bar - 1, px(0.73) - 1), fill=WHITE)
    elif glyph == "alert":
        stroke = max(2, round(size * 0.14)) * ss
        left = (size * ss - stroke) // ss // 2 * ss
        d.rectangle((left, px(0.19), left + stroke - 1, px(0.58) - 1), fill=WHITE)
        d.rectangle((left, px(0.81) - stroke, left + stroke - 1, px(0.81) - 1), fill=WHITE)
    else:  # pragma: no cover - STATES names only the glyphs above
        raise ValueError(glyph)
    return big.resize((size, size), Image.Resampling.BOX)


def png_path(state: str, size: int, folder: Path = HERE) -> Path:
    return folder / f"avatar-cam-{state}-{size}.png"


def write_all(folder: Path = HERE) -> list[Path]:
    written = []
    for state in STATES:
        for size in SIZES:
            path = png_path(state, size, folder)
            draw_icon(state, size).save(path, optimize=True)
            written.append(path)
        images = [draw_icon(state, s) for s in ICO_SIZES]
        for name in [f"avatar-cam-{state}.ico"] + (["avatar-cam.ico"] if state == "live" else []):
            images[-1].save(folder / name, sizes=[(s, s) for s in ICO_SIZES], append_images=images[:-1])
            written.append(folder / name)
    return written


if __name__ == "__main__":
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else HERE
    out.mkdir(parents=True, exist_ok=True)
    for p in write_all(out):
        print(p)
