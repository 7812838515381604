#!/usr/bin/env bash
# Set up what the tests need on a fresh Debian/Ubuntu machine, then run them: `bash tests/run.sh [pytest args]`.
# System packages: speech (espeak-ng, sox), audio (PortAudio, PulseAudio for the virtual microphone),
# ffmpeg (mp4 muxing), Xvfb + openbox + xdotool + ImageMagick (the tray on a virtual desktop).
# rtkit + polkitd (real-time priority for the camera thread, as a desktop grants it: tests/rtkit_bus.py).
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(espeak-ng flite sox libportaudio2 libsndfile1 ffmpeg pulseaudio pulseaudio-utils libasound2-plugins
          xvfb xauth openbox xdotool imagemagick x11-utils shellcheck
          trayer gir1.2-gtk-3.0 libgirepository1.0-dev libcairo2-dev pkg-config gir1.2-ayatanaappindicator3-0.1 dbus-daemon
          rtkit polkitd)
# The guest test (a QEMU guest with a real v4l2loopback camera and Chromium as the call app; ~5 min):
# AVATAR_GUEST_TESTS=0 leaves it out.
if [ "${AVATAR_GUEST_TESTS:-1}" != 0 ]; then packages+=(qemu-system-x86 chromium v4l-utils make gcc); fi
missing=()
for p in "${packages[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
    sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
    echo "installing system packages: ${missing[*]}"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q --upgrade pip >/dev/null
.venv/bin/pip install -q -e '.[test]'

# The house's rules before the tests: lint, and imports that flow one way (.importlinter). A violation fails.
.venv/bin/ruff check avatar_cam tests
.venv/bin/lint-imports --no-cache

set +e
.venv/bin/python -m pytest "$@"
rc=$?
if [ $rc -eq 5 ]; then
    echo "pytest collected no tests: treating that as a failure" >&2
    exit 1
fi
exit $rc
