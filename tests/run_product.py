"""Run the real `avatar-cam` CLI with the recording camera backend registered (see camera_recorder.py).

Usage: python tests/run_product.py run ... --camera-backend test-recorder
Prints "camera closed after N frames" when the product closes the camera.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import camera_recorder  # noqa: E402

from avatar_cam.cli import main  # noqa: E402


class AnnouncingCamera(camera_recorder.RecordingCamera):
    def __init__(self, **kw):
        super().__init__(keep_frames=False, **kw)

    def close(self) -> None:
        if not self.closed:
            print(f"camera closed after {len(self.times)} frames", flush=True)
        super().close()


if __name__ == "__main__":
    camera_recorder.register()
    import pyvirtualcam

    pyvirtualcam.register_backend(camera_recorder.BACKEND, AnnouncingCamera)
    sys.exit(main(sys.argv[1:]))
