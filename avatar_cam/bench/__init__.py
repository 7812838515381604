"""`avatar-cam bench KIND`: measurements a user (or CI) can rerun, printed as a table or JSON.

One module per kind, each with `register(kinds)`; what they share is in common.py and cameras.py. The benches
import the product; nothing in the product imports them (the CLI wires them in, see cli/__init__.py).
"""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    from avatar_cam.bench import av_sync, engine, live, preview, render, soak, startup, visemes

    bench = sub.add_parser("bench", help="measure speed, latency and memory")
    kinds = bench.add_subparsers(dest="bench_kind", metavar="KIND", required=True)
    for kind in (engine, live, render, soak, av_sync, startup, visemes, preview):
        kind.register(kinds)
