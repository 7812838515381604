"""A short soak (issue 7, "Long calls"): `avatar-cam bench soak` as a user runs it, for 1.5 minutes.

Real parts: the CLI, the astronaut portrait, espeak-ng speech alternating with silence played in real time,
the live pipeline (ring, streaming mel, voice gate, idle motion, compositor at 640x360) and the lite engine.
Stand-in: the camera device (bench's counting backend). It runs in its own process, so its RSS is the
product's alone.

Why the lite engine and 640x360 here: the Wav2Lip path on a shared 2-core machine runs near its limit and its
frame gaps follow the machine's load, not the length of the call. Measured on the development machine while
other test suites ran: Wav2Lip at 1280x720 23.6 fps, 55 % late frames; at 640x360 27 fps, 23-29 % late and
gaps of 100-370 ms (once 1.2 s), which a light canary process did not see (OpenVINO's threads wait for each
other when a core is taken); the lite engine in the same conditions: 30.0 fps, 0.3 % late, largest gap 116 ms.
A CI check must fail on what grows with the length of a call (a leak, a list that is never trimmed, drift, a
reopen that blocks the frame thread), so it runs the path whose timing is steady; the Wav2Lip soak is run by
hand and recorded (`avatar-cam bench soak --minutes 60`).

The issue's targets are for 60 minutes on a quiet machine: RSS growth < 20 MB, no stall > 100 ms, latency at
the end within 10 ms of the start. Scaled to 1.5 minutes on a shared, noisy 2-core machine:
- RSS growth keeps the absolute 20 MB (not 1.5/60 of it: in a short run allocator noise after the warm-up
  is a few MB either way; a per-frame leak of even 10 kB would be 27 MB over these ~2700 frames);
- stalls < 250 ms, and only those that are ours: a loaded CI machine deschedules a process for 100-200 ms at
  times, so the bench runs a canary process and a gap the canary saw too is the machine's (reported as
  `stalls_machine`, not asserted); a real freeze of ours (a blocking call on the frame thread, a lock held
  across a device reopen) lasts seconds;
- latency at the end within 30 ms of the start, and A/V drift under 30 ms: a frame period (33 ms) is the
  smallest step a viewer can see; drift that grows with time shows here as a trend, and the 60-minute run
  checks the 10 ms target.
"""

from __future__ import annotations

import json
import shutil
import time

import pytest
from helpers import run_cli

MINUTES = 1.5


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="needs espeak-ng for the speech")
def test_short_soak_stays_smooth_and_does_not_grow():
    t0 = time.monotonic()
    out = run_cli("bench", "soak", "--minutes", str(MINUTES), "--size", "640x360", "--engine", "lite", "--json",
                  timeout=60 * MINUTES + 240)
    took = time.monotonic() - t0
    assert out.returncode == 0, out.stderr[-3000:]
    r = json.loads(out.stdout)
    summary = json.dumps(r, indent=1)
    assert {"fps", "late_frames_pct", "latency_ms_p95_start", "latency_ms_p95_end", "rss_growth_mb", "max_stall_ms",
            "av_drift_ms"} <= set(r), summary
    assert 60 * MINUTES - 1 <= r["seconds"] <= 60 * MINUTES + 5 and took < 60 * MINUTES + 180, summary
    assert r["frames"] > 0.8 * 30 * 60 * MINUTES, summary
    assert r["fps"] > 27, summary
    assert r["late_frames_pct"] < 5, summary
    assert r["rss_growth_mb"] < 20, summary
    assert r["max_stall_ms_ours"] < 250, summary
    assert abs(r["latency_ms_p95_end"] - r["latency_ms_p95_start"]) < 30, summary
    assert abs(r["av_drift_ms"]) < 30, summary
    assert r["pipeline_records_kept"] <= 20_000, summary
