#!/usr/bin/env bash
# Install Avatar Cam on macOS.
#
#   bash install_scripts/install-macos.sh [--autostart]
#
# What it does, saying each change before making it, and nothing that is already in place:
#   1. PortAudio through Homebrew (brew install portaudio)
#   2. checks the virtual camera: OBS Studio 30 or newer, whose camera extension macOS registers the first time
#      OBS starts its virtual camera; and the optional virtual microphone (BlackHole). It never installs those
#      itself (both ask for a system approval): it says exactly what to do.
#   3. a virtual environment (default ~/Library/Application Support/avatar-cam/venv) with this repository's
#      package in it, and ~/.local/bin/avatar-cam
#   4. with --autostart, a LaunchAgent (~/Library/LaunchAgents/io.avatar-cam.tray.plist): the same file the
#      tray menu's "Start at login" writes
#   5. runs `avatar-cam doctor`
# No sudo needed. Run it again at any time: it changes only what differs.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OBS_APP=/Applications/OBS.app
OBS_EXTENSION=com.obsproject.obs-studio.mac-camera-extension
LAUNCH_AGENT=$HOME/Library/LaunchAgents/io.avatar-cam.tray.plist

usage() {
    cat <<EOF
Usage: bash install_scripts/install-macos.sh [OPTIONS]

  --autostart             also start Avatar Cam at login (a LaunchAgent; the tray menu can turn it off)
  --venv DIR              the virtual environment (default: ~/Library/Application Support/avatar-cam/venv)
  --python PYTHON         the Python that creates the venv (default: the newest python3.1x found; 3.10 or newer)
  --reinstall             reinstall the package even if this source is already installed
  --no-brew               do not install PortAudio with Homebrew
  --dry-run               say what would change, change nothing
  --no-doctor             do not run \`avatar-cam doctor\` at the end
  -h, --help              this text
EOF
}

VENV="" PYTHON="" BREW=1 DRY_RUN=0 AUTOSTART=0 REINSTALL=0 DOCTOR=1

die() { printf 'install-macos.sh: %s\n' "$*" >&2; exit 1; }
need_value() { if [ $# -lt 2 ] || [ -z "$2" ]; then die "$1 needs a value (see --help)"; fi; }

while [ $# -gt 0 ]; do
    case $1 in
        --venv) need_value "$@"; VENV=$2; shift ;;
        --venv=*) VENV=${1#*=} ;;
        --python) need_value "$@"; PYTHON=$2; shift ;;
        --python=*) PYTHON=${1#*=} ;;
        --autostart) AUTOSTART=1 ;;
        --reinstall) REINSTALL=1 ;;
        --no-brew) BREW=0 ;;
        --dry-run) DRY_RUN=1 ;;
        --no-doctor) DOCTOR=0 ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; die "unknown option: $1" ;;
    esac
    shift
done

[ "$(uname -s)" = Darwin ] || die "this is the macOS installer; on Linux use install_scripts/install-linux.sh"
case ${VENV:=$HOME/Library/Application Support/avatar-cam/venv} in /*) ;; *) VENV=$PWD/$VENV ;; esac
BIN_DIR=$HOME/.local/bin
EXE=$VENV/bin/avatar-cam
MARKER=$VENV/.avatar-cam-install

step() { printf '\n==> %s\n' "$*"; }
change() { printf '  change: %s\n' "$*"; }
already() { printf '  already: %s\n' "$*"; }
note() { printf '  note: %s\n' "$*"; }
warn() { printf '  WARNING: %s\n' "$*"; }
run() {
    if [ "$DRY_RUN" -eq 1 ]; then
        printf '  would run:'; printf ' %q' "$@"; printf '\n'
    else
        "$@"
    fi
}

printf 'Avatar Cam installer for macOS (%s)\n' "$REPO"
[ "$DRY_RUN" -eq 0 ] || printf 'Dry run: nothing will be changed.\n'

# --- Python -----------------------------------------------------------------------------------------------

good_python() { "$1" -c 'import sys; sys.exit(sys.version_info < (3, 10))' >/dev/null 2>&1; }
if [ -z "$PYTHON" ]; then
    for candidate in python3.13 python3.12 python3.11 python3.10 python3; do
        if command -v "$candidate" >/dev/null 2>&1 && good_python "$candidate"; then PYTHON=$candidate; break; fi
    done
fi
if [ -z "$PYTHON" ] || ! good_python "$PYTHON"; then
    die "no Python 3.10 or newer found (the one macOS ships is older). Install one: brew install python@3.12 ; then run this again"
fi
printf '  python: %s (%s)\n  venv: %s\n' "$(command -v "$PYTHON")" "$("$PYTHON" -c 'import platform; print(platform.python_version())')" "$VENV"

# --- 1. PortAudio -----------------------------------------------------------------------------------------

step "PortAudio (Homebrew)"
if [ "$BREW" -eq 0 ]; then
    note "skipped (--no-brew)"
elif ! command -v brew >/dev/null 2>&1; then
    warn "Homebrew is not installed, so PortAudio is not checked. Install Homebrew from https://brew.sh, then: brew install portaudio"
elif brew list --versions portaudio >/dev/null 2>&1; then
    already "portaudio $(brew list --versions portaudio | cut -d' ' -f2-)"
else
    change "installing portaudio with Homebrew"
    run brew install portaudio
fi

# --- 2. virtual camera and microphone: check and guide ----------------------------------------------------

step "Virtual camera (OBS Studio 30 or newer)"
obs_version=""
if [ -f "$OBS_APP/Contents/Info.plist" ]; then
    obs_version=$(defaults read "$OBS_APP/Contents/Info" CFBundleShortVersionString 2>/dev/null || true)
fi
if [ -z "$obs_version" ]; then
    warn "OBS Studio is not installed: Avatar Cam's camera on macOS is OBS's virtual camera. Not installing it for you:"
    note "  1. brew install --cask obs   (or download it from https://obsproject.com)"
    note "  2. open OBS once, click Start Virtual Camera, and allow the system extension in System Settings"
    note "     (General > Login Items & Extensions, or Privacy & Security); then quit OBS: Avatar Cam does not need it running"
elif [ "${obs_version%%.*}" -lt 30 ] 2>/dev/null; then
    warn "OBS $obs_version is too old: Avatar Cam needs OBS 30 or newer's camera extension. Update: brew upgrade --cask obs"
elif systemextensionsctl list 2>/dev/null | grep "$OBS_EXTENSION" | grep -q 'activated enabled'; then
    already "OBS $obs_version with its camera extension active"
else
    warn "OBS $obs_version is installed but its camera extension is not active yet:"
    note "  open OBS once (open -a OBS), click Start Virtual Camera, allow the system extension when macOS asks"
    note "  (System Settings > General > Login Items & Extensions), then quit OBS"
fi

step "Virtual microphone (optional: BlackHole)"
if compgen -G "/Library/Audio/Plug-Ins/HAL/BlackHole*.driver" >/dev/null; then
    already "BlackHole is installed"
else
    note "not installed. To let the call hear your voice in step with the lips, install it: brew install --cask blackhole-2ch"
fi

# --- 3. the virtual environment and the package -----------------------------------------------------------

step "Virtual environment"
if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c 'import sys' >/dev/null 2>&1; then
    already "$VENV"
elif [ -e "$VENV" ]; then
    change "recreating the broken virtual environment $VENV (its Python does not run)"
    run "$PYTHON" -m venv --clear "$VENV"
else
    change "creating the virtual environment $VENV"
    run "$PYTHON" -m venv "$VENV"
fi

# What pip would install from this repository, hashed (Python: macOS has no sha256sum and a different xargs).
fingerprint() {
    "$PYTHON" - "$REPO" <<'EOF'
import hashlib, pathlib, sys
repo = pathlib.Path(sys.argv[1])
h = hashlib.sha256()
for top in ("pyproject.toml", "README.md", "avatar_cam", "models", "tray_assets"):
    p = repo / top
    for f in sorted([p] if p.is_file() else p.rglob("*") if p.is_dir() else []):
        if f.is_file() and "__pycache__" not in f.parts and f.suffix != ".pyc":
            h.update(str(f.relative_to(repo)).encode() + b"\0" + f.read_bytes())
print(h.hexdigest())
EOF
}

step "The avatar-cam package"
install_id="source=$(fingerprint)"
if [ "$REINSTALL" -eq 0 ] && [ -f "$MARKER" ] && [ "$(cat "$MARKER")" = "$install_id" ] && "$EXE" --version >/dev/null 2>&1; then
    already "$("$EXE" --version) from this source is installed in the venv"
else
    change "installing avatar-cam from $REPO and its dependencies into the venv (several hundred MB the first time)"
    run "$VENV/bin/python" -m pip install --disable-pip-version-check "$REPO" ||
        die "pip could not install the package (see above); fix that and run this script again"
    if [ "$DRY_RUN" -eq 0 ]; then printf '%s\n' "$install_id" >"$MARKER"; fi
fi

step "Command"
if [ -L "$BIN_DIR/avatar-cam" ] && [ "$(readlink "$BIN_DIR/avatar-cam")" = "$EXE" ]; then
    already "$BIN_DIR/avatar-cam -> $EXE"
else
    if [ -e "$BIN_DIR/avatar-cam" ] && [ ! -L "$BIN_DIR/avatar-cam" ]; then
        change "moving the existing $BIN_DIR/avatar-cam (not a link made by this script) to $BIN_DIR/avatar-cam.old"
        run mv -f "$BIN_DIR/avatar-cam" "$BIN_DIR/avatar-cam.old"
    fi
    change "linking $BIN_DIR/avatar-cam -> $EXE"
    run mkdir -p "$BIN_DIR"
    run ln -sfn "$EXE" "$BIN_DIR/avatar-cam"
fi
case ":$PATH:" in
    *":$BIN_DIR:"*) ;;
    *) note "$BIN_DIR is not on your PATH. Add it: echo 'export PATH=\"\$HOME/.local/bin:\$PATH\"' >> ~/.zprofile (then open a new terminal)" ;;
esac

# --- 4. start at login ------------------------------------------------------------------------------------

step "Start at login"
if [ "$AUTOSTART" -eq 0 ]; then
    if [ -f "$LAUNCH_AGENT" ]; then already "on ($LAUNCH_AGENT); left as it is"; else note "off (add --autostart, or use the tray menu's \"Start at login\")"; fi
elif [ "$DRY_RUN" -eq 1 ] && [ ! -x "$VENV/bin/python" ]; then
    change "creating $LAUNCH_AGENT (runs $EXE at login)"
else
    # The installed package writes it, so the file is byte for byte the one the tray's toggle writes.
    agent_code='import sys; from avatar_cam import autostart as a; sys.stdout.buffer.write(a.launch_agent(a.command()))'
    wanted=$("$VENV/bin/python" -c "$agent_code")
    if [ -f "$LAUNCH_AGENT" ] && [ "$(cat "$LAUNCH_AGENT")" = "$wanted" ]; then
        already "$LAUNCH_AGENT is up to date"
    else
        change "writing $LAUNCH_AGENT (RunAtLoad: starts $EXE at your next login; start it now with: avatar-cam)"
        run "$VENV/bin/python" -c 'from avatar_cam import autostart; autostart.set_enabled(True)'
    fi
fi
note "the first time Avatar Cam listens, macOS asks whether it may use the microphone: allow it"

# --- 5. doctor --------------------------------------------------------------------------------------------

step "avatar-cam doctor"
if [ "$DRY_RUN" -eq 1 ] || [ "$DOCTOR" -eq 0 ]; then
    note "not run (--dry-run or --no-doctor); run it yourself: avatar-cam doctor"
elif "$EXE" doctor; then
    printf '\nAvatar Cam is installed. Start it with: avatar-cam\n'
else
    printf '\nAvatar Cam is installed, but the doctor found problems (the !! lines above, each with its fix).\n'
    printf 'Fix them and run: avatar-cam doctor\n'
fi
