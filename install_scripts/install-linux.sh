#!/usr/bin/env bash
# Install Avatar Cam on Linux (Debian/Ubuntu with apt, Fedora with dnf).
#
#   bash install_scripts/install-linux.sh [--autostart]
#   bash install_scripts/install-linux.sh --camera-only     # steps 2 and 3 alone (the virtual camera)
#
# What it does, saying each change before making it, and nothing that is already in place:
#   1. system packages: PortAudio, v4l2loopback (DKMS), AppIndicator and GTK introspection, pactl, venv support
#   2. /etc/modprobe.d/avatar-cam.conf and /etc/modules-load.d/avatar-cam.conf: the "Avatar Cam" virtual camera
#      (v4l2loopback with exclusive_caps=1, which Chrome needs) is created at every boot
#   3. loads the module now (modprobe), or says why it could not and what to do
#   4. a virtual environment (default ~/.local/share/avatar-cam/venv) with this repository's package in it
#   5. ~/.local/bin/avatar-cam, an app-menu entry, and with --autostart a login entry
#   6. runs `avatar-cam doctor`
# It runs as your user and asks sudo only for steps 1-3. Run it again at any time: it changes only what differs.
#
# Test mode: --prefix DIR puts everything under DIR (/etc -> DIR/etc, your home -> DIR/home), never needs root,
# never installs packages or loads modules, and leaves the real system alone.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CARD_LABEL="Avatar Cam"
V4L2_OPTIONS="devices=1 video_nr=10 card_label=\"$CARD_LABEL\" exclusive_caps=1"

usage() {
    cat <<EOF
Usage: bash install_scripts/install-linux.sh [OPTIONS]

  --autostart             also start Avatar Cam at login (the tray menu's "Start at login" does the same)
  --venv DIR              the virtual environment (default: ~/.local/share/avatar-cam/venv)
  --python PYTHON         the Python that creates the venv (default: python3; 3.10 or newer)
  --reinstall             reinstall the package even if this source is already installed
  --no-system-packages    do not install system packages (apt/dnf)
  --skip-modprobe         do not load the kernel module now
  --camera-only           only the virtual camera: its boot configuration and loading the module now (steps
                          2 and 3; no packages, venv, menu entries or doctor); v4l2loopback must be installed
  --dry-run               say what would change, change nothing
  --no-doctor             do not run \`avatar-cam doctor\` at the end
  --prefix DIR            test mode: everything under DIR (implies --no-system-packages --skip-modprobe)
  --system-site-packages  let the venv see the packages of --python (tests, offline machines)
  --no-deps               install only the avatar-cam package, not its dependencies (with --system-site-packages)
  -h, --help              this text
EOF
}

PREFIX="" VENV="" PYTHON=python3
SYSTEM_PACKAGES=1 MODPROBE=1 CAMERA_ONLY=0 DRY_RUN=0 AUTOSTART=0 SITE_PACKAGES=0 NO_DEPS=0 REINSTALL=0 DOCTOR=1

die() { printf 'install-linux.sh: %s\n' "$*" >&2; exit 1; }
need_value() { if [ $# -lt 2 ] || [ -z "$2" ]; then die "$1 needs a value (see --help)"; fi; }

while [ $# -gt 0 ]; do
    case $1 in
        --prefix) need_value "$@"; PREFIX=$2; shift ;;
        --prefix=*) PREFIX=${1#*=} ;;
        --venv) need_value "$@"; VENV=$2; shift ;;
        --venv=*) VENV=${1#*=} ;;
        --python) need_value "$@"; PYTHON=$2; shift ;;
        --python=*) PYTHON=${1#*=} ;;
        --autostart) AUTOSTART=1 ;;
        --reinstall) REINSTALL=1 ;;
        --no-system-packages) SYSTEM_PACKAGES=0 ;;
        --skip-modprobe) MODPROBE=0 ;;
        --camera-only) CAMERA_ONLY=1 ;;
        --dry-run) DRY_RUN=1 ;;
        --no-doctor) DOCTOR=0 ;;
        --system-site-packages) SITE_PACKAGES=1 ;;
        --no-deps) NO_DEPS=1 ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; die "unknown option: $1" ;;
    esac
    shift
done

absolute() { case $1 in /*) printf '%s' "$1" ;; *) printf '%s/%s' "$PWD" "$1" ;; esac; }

if [ -n "$PREFIX" ]; then
    PREFIX=$(absolute "$PREFIX")
    ROOT=$PREFIX
    HOME_DIR=$PREFIX/home
    CONFIG_HOME=$HOME_DIR/.config
    DATA_HOME=$HOME_DIR/.local/share
    # Everything started from here (pip, which even asks rustc its version; the doctor; OpenVINO) sees the
    # prefix as its home, so nothing lands in the real one.
    export HOME=$HOME_DIR XDG_CONFIG_HOME=$CONFIG_HOME XDG_DATA_HOME=$DATA_HOME
    export XDG_CACHE_HOME=$HOME_DIR/.cache XDG_STATE_HOME=$HOME_DIR/.local/state
else
    [ "$(id -u)" -ne 0 ] || [ -z "${SUDO_USER:-}" ] ||
        die "run this as your own user, not with sudo: it installs into your home and asks sudo when it needs to"
    ROOT=""
    HOME_DIR=$HOME
    # As the XDG spec (and avatar_cam/autostart.py) says: a relative value is ignored.
    case ${XDG_CONFIG_HOME:-} in /*) CONFIG_HOME=$XDG_CONFIG_HOME ;; *) CONFIG_HOME=$HOME/.config ;; esac
    case ${XDG_DATA_HOME:-} in /*) DATA_HOME=$XDG_DATA_HOME ;; *) DATA_HOME=$HOME/.local/share ;; esac
fi
VENV=$(absolute "${VENV:-$DATA_HOME/avatar-cam/venv}")
BIN_DIR=$HOME_DIR/.local/bin
MODPROBE_CONF=$ROOT/etc/modprobe.d/avatar-cam.conf
MODULES_LOAD_CONF=$ROOT/etc/modules-load.d/avatar-cam.conf
MENU_ENTRY=$DATA_HOME/applications/avatar-cam.desktop
AUTOSTART_ENTRY=$CONFIG_HOME/autostart/avatar-cam.desktop
MARKER=$VENV/.avatar-cam-install
EXE=$VENV/bin/avatar-cam

# --- output and changes -----------------------------------------------------------------------------------

step() { printf '\n==> %s\n' "$*"; }
change() { printf '  change: %s\n' "$*"; }
already() { printf '  already: %s\n' "$*"; }
note() { printf '  note: %s\n' "$*"; }
warn() { printf '  WARNING: %s\n' "$*"; }

# Run a command, or in --dry-run only say it. Root-owned paths get sudo (never in --prefix mode).
run() {
    if [ "$DRY_RUN" -eq 1 ]; then
        printf '  would run:'; printf ' %q' "$@"; printf '\n'
    else
        "$@"
    fi
}
as_root() {
    if [ -n "$PREFIX" ] || [ "$(id -u)" -eq 0 ]; then
        run "$@"
    elif command -v sudo >/dev/null 2>&1; then
        run sudo "$@"
    else
        die "this step needs root and sudo is missing: run it as root, or skip it (--no-system-packages, --skip-modprobe)"
    fi
}

# write_file PATH CONTENT [root]: write only if different, after showing what changes.
write_file() {
    local path=$1 content=$2 owner=${3:-user}
    if [ -f "$path" ] && printf '%s' "$content" | cmp -s - "$path"; then
        already "$path is up to date"
        return
    fi
    if [ -e "$path" ]; then
        change "rewriting $path:"
        diff -u "$path" <(printf '%s' "$content") | tail -n +3 | sed 's/^/      /' || true
    else
        change "creating $path:"
        printf '%s' "$content" | sed 's/^/      | /'
    fi
    if [ "$DRY_RUN" -eq 1 ]; then
        printf '  (dry run: not written)\n'
    elif [ "$owner" = root ] && [ -z "$PREFIX" ]; then
        as_root mkdir -p "$(dirname "$path")"
        printf '%s' "$content" | as_root tee "$path" >/dev/null
    else
        mkdir -p "$(dirname "$path")"
        printf '%s' "$content" >"$path.tmp.$$"
        mv -f "$path.tmp.$$" "$path"
    fi
}

# One argument for a desktop entry's Exec= key, exactly as avatar_cam/autostart.py's desktop_exec_quote.
desktop_quote() {
    local arg=$1 reserved=$' \t\n"\'\\><~|&;$*?#()`' quoted="" out="" c i needs=0
    [ -n "$arg" ] || needs=1
    for ((i = 0; i < ${#arg}; i++)); do
        c=${arg:i:1}
        [[ $reserved == *"$c"* ]] && needs=1
        case $c in '"' | '`' | '$' | "\\") quoted+="\\$c" ;; *) quoted+=$c ;; esac
    done
    if [ "$needs" -eq 1 ]; then quoted="\"$quoted\""; else quoted=$arg; fi
    for ((i = 0; i < ${#quoted}; i++)); do
        c=${quoted:i:1}
        case $c in '%') out+="%%" ;; "\\") out+="\\\\" ;; $'\n') out+='\n' ;; $'\r') out+='\r' ;; *) out+=$c ;; esac
    done
    printf '%s' "$out"
}

# --- 0. what we are about to do ---------------------------------------------------------------------------

printf 'Avatar Cam installer (%s)\n' "$REPO"
if [ -n "$PREFIX" ]; then
    printf 'Test mode: everything goes under %s; no system packages, no kernel module, no root.\n' "$PREFIX"
    SYSTEM_PACKAGES=0 MODPROBE=0
fi
[ "$DRY_RUN" -eq 0 ] || printf 'Dry run: nothing will be changed.\n'
printf '  venv: %s\n  command: %s/avatar-cam\n' "$VENV" "$BIN_DIR"

command -v "$PYTHON" >/dev/null 2>&1 || die "$PYTHON not found: install Python 3.10 or newer (sudo apt-get install python3 python3-venv), or pass --python"
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' ||
    die "$PYTHON is Python $("$PYTHON" -c 'import platform; print(platform.python_version())'); Avatar Cam needs 3.10 or newer (pass one with --python)"

# --- 1. system packages -----------------------------------------------------------------------------------

is_gnome() { [[ ${XDG_CURRENT_DESKTOP:-} == *GNOME* ]]; }

apt_packages() {
    local p gir=libgirepository1.0-dev
    local wanted=(libportaudio2 v4l2loopback-dkms v4l2loopback-utils kmod "linux-headers-$(uname -r)"
        gir1.2-ayatanaappindicator3-0.1 libayatana-appindicator3-1 gir1.2-gtk-3.0 python3-gi
        pulseaudio-utils python3-venv rtkit)  # rtkit: real-time priority for the camera's threads
    if [ "$NO_DEPS" -eq 0 ]; then  # to build PyGObject into the venv (the tray menu needs it)
        apt-cache show libgirepository-2.0-dev >/dev/null 2>&1 && gir=libgirepository-2.0-dev
        wanted+=("$gir" libcairo2-dev pkg-config python3-dev gcc)
    fi
    is_gnome && wanted+=(gnome-shell-extension-appindicator)
    local missing=() unknown=()
    for p in "${wanted[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' && continue
        if apt-cache show "$p" >/dev/null 2>&1; then missing+=("$p"); else unknown+=("$p"); fi
    done
    if [ ${#unknown[@]} -gt 0 ]; then
        warn "apt does not know: ${unknown[*]}; skipping them. (On Ubuntu, v4l2loopback-dkms is in universe: sudo add-apt-repository universe, then run this again.)"
    fi
    if [ ${#missing[@]} -eq 0 ]; then
        already "installed: ${wanted[*]}"
        return
    fi
    change "installing with apt-get: ${missing[*]}"
    as_root apt-get update
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y "${missing[@]}"
}

dnf_packages() {
    local p wanted=(portaudio v4l2loopback kernel-devel libayatana-appindicator-gtk3 gtk3 python3-gobject
        pulseaudio-utils rtkit)
    [ "$NO_DEPS" -eq 1 ] || wanted+=(gobject-introspection-devel cairo-gobject-devel pkgconf-pkg-config python3-devel gcc)
    is_gnome && wanted+=(gnome-shell-extension-appindicator)
    if ! rpm -q v4l2loopback >/dev/null 2>&1 && ! dnf repolist --enabled 2>/dev/null | grep -qi rpmfusion-free; then
        warn "v4l2loopback comes from RPM Fusion, which is not enabled. Enable it, then run this script again:"
        # shellcheck disable=SC2016  # printed for the user to run, not expanded here
        printf '      sudo dnf install https://mirrors.rpmfusion.org/free/fedora/rpmfusion-free-release-$(rpm -E %%fedora).noarch.rpm\n'
        wanted=("${wanted[@]/v4l2loopback/}")
    fi
    local missing=()
    for p in "${wanted[@]}"; do
        [ -n "$p" ] || continue
        rpm -q "$p" >/dev/null 2>&1 || missing+=("$p")
    done
    if [ ${#missing[@]} -eq 0 ]; then
        already "installed: ${wanted[*]}"
        return
    fi
    change "installing with dnf: ${missing[*]}"
    as_root dnf install -y "${missing[@]}"
}

step "System packages"
if [ "$CAMERA_ONLY" -eq 1 ]; then
    note "skipped (--camera-only): v4l2loopback must already be installed (v4l2loopback-dkms and your kernel's headers)"
elif [ "$SYSTEM_PACKAGES" -eq 0 ]; then
    note "skipped (--no-system-packages or --prefix): PortAudio, v4l2loopback, AppIndicator, pactl are not checked"
elif command -v apt-get >/dev/null 2>&1; then
    apt_packages
elif command -v dnf >/dev/null 2>&1; then
    dnf_packages
else
    warn "neither apt-get nor dnf found. Install these yourself: PortAudio, v4l2loopback (DKMS), Ayatana AppIndicator3 + its GObject introspection, GTK 3 introspection, pactl"
fi

# --- 2. the virtual camera at every boot ------------------------------------------------------------------

step "Virtual camera configuration (v4l2loopback, \"$CARD_LABEL\")"
write_file "$MODPROBE_CONF" "# Written by Avatar Cam's install script: the \"$CARD_LABEL\" virtual camera.
# exclusive_caps=1 makes Chrome and other WebRTC apps list it as a camera.
options v4l2loopback $V4L2_OPTIONS
" root
write_file "$MODULES_LOAD_CONF" "# Written by Avatar Cam's install script: create the \"$CARD_LABEL\" virtual camera at boot.
v4l2loopback
" root
for other in "$ROOT"/etc/modprobe.d/*.conf; do
    if [ ! -f "$other" ] || [ "$other" = "$MODPROBE_CONF" ]; then continue; fi
    if grep -qE '^[[:space:]]*options[[:space:]]+v4l2loopback' "$other"; then
        warn "$other also sets v4l2loopback options; modprobe may merge or override them. Check it, or remove it."
    fi
done

# --- 3. the module now ------------------------------------------------------------------------------------

avatar_cam_device() {
    local f
    for f in /sys/class/video4linux/video*/name; do
        [ -f "$f" ] && [ "$(cat "$f")" = "$CARD_LABEL" ] && { printf '/dev/%s' "$(basename "$(dirname "$f")")"; return 0; }
    done
    return 1
}

explain_modprobe_failure() {
    local out=$1
    printf '%s\n' "$out" | sed 's/^/      /'
    if [[ $out == *"Key was rejected"* ]] || { command -v mokutil >/dev/null 2>&1 && mokutil --sb-state 2>/dev/null | grep -qi 'enabled'; }; then
        note "Secure Boot refuses unsigned modules. Enroll the DKMS signing key, reboot, and confirm the key in the blue MOK screen:"
        note "  sudo mokutil --import /var/lib/dkms/mok.pub   (Fedora/akmods: sudo mokutil --import /etc/pki/akmods/certs/public_key.der)"
    fi
    if [[ $out == *"not found"* ]]; then
        note "the module was not built for this kernel ($(uname -r)). Check: dkms status"
        note "  Debian/Ubuntu: sudo apt-get install --reinstall linux-headers-$(uname -r) v4l2loopback-dkms"
        note "  Fedora: sudo akmods --force && sudo dracut -f   (or reboot once after installing)"
    fi
    if [[ $out == *"command not found"* ]]; then
        note "modprobe is missing: sudo apt-get install kmod (Fedora: sudo dnf install kmod)"
    fi
    if [[ $out == *"Operation not permitted"* ]]; then
        note "this system does not allow loading kernel modules (a container or a locked-down kernel): load it on the host"
    fi
}

step "Loading the kernel module"
if dev=$(avatar_cam_device); then
    already "$dev (\"$CARD_LABEL\") exists"
elif [ "$MODPROBE" -eq 0 ]; then
    why="--skip-modprobe"; [ -z "$PREFIX" ] || why="test mode, --prefix"
    note "did NOT load the v4l2loopback kernel module ($why): there is no \"$CARD_LABEL\" camera until you run"
    note "  sudo modprobe v4l2loopback $V4L2_OPTIONS"
    note "or reboot (the configuration above loads it at boot)."
elif [ -d /sys/module/v4l2loopback ]; then
    warn "v4l2loopback is already loaded, without a \"$CARD_LABEL\" device (another app, e.g. OBS, loaded it)."
    note "Not reloading it: that would close the other app's camera. When it is closed, run:"
    note "  sudo modprobe -r v4l2loopback && sudo modprobe v4l2loopback $V4L2_OPTIONS"
else
    change "loading v4l2loopback now: modprobe v4l2loopback (options from $MODPROBE_CONF)"
    if [ "$DRY_RUN" -eq 1 ]; then
        as_root modprobe v4l2loopback
    elif out=$(as_root modprobe v4l2loopback 2>&1); then
        sleep 0.5
        if dev=$(avatar_cam_device); then
            printf '  loaded: %s ("%s")\n' "$dev" "$CARD_LABEL"
        else
            warn "modprobe succeeded but no \"$CARD_LABEL\" device appeared; run \`avatar-cam doctor\` after a reboot"
        fi
    else
        warn "could not load v4l2loopback, so there is no virtual camera yet:"
        explain_modprobe_failure "$out"
        note "then: sudo modprobe v4l2loopback   (or reboot)"
    fi
fi

if [ "$CAMERA_ONLY" -eq 1 ]; then
    printf '\nThe virtual camera is set up (--camera-only: the venv, menu entries and doctor were left alone).\n'
    exit 0
fi

# --- 4. the virtual environment and the package -----------------------------------------------------------

# What pip would install from this repository: a changed file means a reinstall, the same files mean none.
source_fingerprint() {
    local p items=()
    for p in pyproject.toml README.md avatar_cam models tray_assets; do [ ! -e "$REPO/$p" ] || items+=("$p"); done
    (cd "$REPO" && find "${items[@]}" -type f -not -path '*/__pycache__/*' -not -name '*.pyc' -print0 |
        LC_ALL=C sort -z | xargs -0 -r sha256sum | sha256sum | cut -d' ' -f1)
}

step "Virtual environment"
if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c 'import sys' >/dev/null 2>&1; then
    already "$VENV"
else
    venv_args=()
    [ "$SITE_PACKAGES" -eq 0 ] || venv_args+=(--system-site-packages)
    if [ -e "$VENV" ]; then
        change "recreating the broken virtual environment $VENV (its Python does not run)"
        venv_args+=(--clear)
    else
        change "creating the virtual environment $VENV"
    fi
    run "$PYTHON" -m venv "${venv_args[@]}" "$VENV" ||
        die "could not create the venv: install venv support (sudo apt-get install python3-venv) and run this again"
fi

# --system-site-packages shows the new venv only the base interpreter's packages. When --python is itself a
# venv's python (CI runs the tests from one), a .pth file passes that venv's packages on too.
if [ "$SITE_PACKAGES" -eq 1 ]; then
    parent_sites=$("$PYTHON" -c 'import sys, sysconfig
if sys.prefix != sys.base_prefix:
    print("\n".join(dict.fromkeys(sysconfig.get_paths()[k] for k in ("purelib", "platlib"))))')
    if [ -n "$parent_sites" ]; then
        if [ -x "$VENV/bin/python" ]; then
            own_site=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
            write_file "$own_site/avatar-cam-parent-venv.pth" "$parent_sites
"
        else
            change "a .pth file in the new venv that shows it the packages of $PYTHON's venv"
        fi
    fi
fi

step "The avatar-cam package"
install_id="source=$(source_fingerprint) deps=$((1 - NO_DEPS))"
if [ "$REINSTALL" -eq 0 ] && [ -f "$MARKER" ] && [ "$(cat "$MARKER")" = "$install_id" ] && "$EXE" --version >/dev/null 2>&1; then
    already "$("$EXE" --version) from this source is installed in the venv"
else
    pip_args=(install --disable-pip-version-check)
    if [ "$NO_DEPS" -eq 1 ]; then
        pip_args+=(--no-deps)
        change "installing the avatar-cam package from $REPO into the venv (only the package: --no-deps)"
    else
        change "installing avatar-cam from $REPO and its dependencies into the venv (about 900 MB the first time: OpenVINO, OpenCV, ...)"
    fi
    run "$VENV/bin/python" -m pip "${pip_args[@]}" "$REPO" ||
        die "pip could not install the package (see above); fix that and run this script again"
    if [ "$DRY_RUN" -eq 0 ]; then printf '%s\n' "$install_id" >"$MARKER"; fi
fi

if [ "$NO_DEPS" -eq 0 ]; then
    if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c 'import gi' >/dev/null 2>&1; then
        already "PyGObject (the tray's GTK/AppIndicator menu) is in the venv"
    else
        gi_req="PyGObject<3.51"  # 3.51 and newer need girepository-2.0 (GLib 2.80 or newer)
        ! pkg-config --exists girepository-2.0 2>/dev/null || gi_req="PyGObject"
        change "installing $gi_req into the venv (the tray menu; builds against the system's GObject libraries)"
        run "$VENV/bin/python" -m pip install --disable-pip-version-check "$gi_req" ||
            warn "PyGObject did not build: the tray falls back to a menu-less icon. Install libgirepository1.0-dev libcairo2-dev pkg-config python3-dev gcc and run this again"
    fi
fi

# --- 5. command, menu entry, autostart --------------------------------------------------------------------

step "Command and menu entries"
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
    *) [ -n "$PREFIX" ] || note "$BIN_DIR is not on your PATH: log out and in (most distributions add it), or add it in ~/.profile" ;;
esac

exec_line=$(desktop_quote "$EXE")
write_file "$MENU_ENTRY" "[Desktop Entry]
Type=Application
Name=Avatar Cam
GenericName=Virtual webcam
Comment=A lip-synced virtual webcam from one portrait photo
Exec=$exec_line
Icon=camera-web
Terminal=false
Categories=AudioVideo;Video;
Keywords=webcam;camera;avatar;lipsync;
StartupNotify=false
"

# The same bytes as avatar_cam/autostart.py's desktop_entry(): the tray's "Start at login" and this agree.
if [ "$AUTOSTART" -eq 1 ]; then
    write_file "$AUTOSTART_ENTRY" "[Desktop Entry]
# Written by Avatar Cam (install script or the tray's \"Start at login\"); delete it to stop autostart.
Type=Application
Name=Avatar Cam
Comment=Start Avatar Cam in the system tray at login
Exec=$exec_line
Icon=camera-web
Terminal=false
X-GNOME-Autostart-enabled=true
X-GNOME-Autostart-Delay=5
"
elif [ -f "$AUTOSTART_ENTRY" ]; then
    already "starts at login ($AUTOSTART_ENTRY); left as it is"
else
    note "not starting at login (add --autostart, or use the tray menu's \"Start at login\")"
fi

if is_gnome && [ -z "$PREFIX" ] && command -v gnome-extensions >/dev/null 2>&1 &&
    ! gnome-extensions list --enabled 2>/dev/null | grep -qiE 'appindicator'; then
    note "GNOME shows the tray icon only with the AppIndicator extension: gnome-extensions enable appindicatorsupport@rgcjonas.gmail.com (log out and in first if it is not found)"
fi

# --- 6. doctor --------------------------------------------------------------------------------------------

step "avatar-cam doctor"
if [ "$DRY_RUN" -eq 1 ] || [ "$DOCTOR" -eq 0 ]; then
    note "not run (--dry-run or --no-doctor); run it yourself: avatar-cam doctor"
else
    if "$EXE" doctor; then
        printf '\nAvatar Cam is installed. Start it from the app menu ("Avatar Cam") or run: avatar-cam\n'
    else
        printf '\nAvatar Cam is installed, but the doctor found problems (the !! lines above, each with its fix).\n'
        printf 'Fix them and run: avatar-cam doctor\n'
    fi
fi
