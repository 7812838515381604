"""A real rtkit for the tests: a system bus with polkitd and rtkit-daemon on it, and a process without the
right to raise its own priority (CAP_SYS_NICE dropped by setpriv), as an ordinary desktop user is.

rtkit asks polkit whether the caller may have real-time priority; polkit's default says yes to processes in an
active desktop session. A test machine has no session, so a polkit rule stands in for it while the bus runs (the
only part that is not as on a desktop). Needs root (polkitd, rtkit-daemon and the rule) and the packages rtkit,
polkitd, dbus-daemon and util-linux's setpriv: tests/run.sh installs them.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

DAEMONS = {"polkitd": Path("/usr/lib/polkit-1/polkitd"), "rtkit-daemon": Path("/usr/libexec/rtkit-daemon")}
ARGS = {"polkitd": ["--no-debug"], "rtkit-daemon": []}
RULE = Path("/etc/polkit-1/rules.d/49-avatar-cam-tests.rules")
# rtkit-daemon finds the system bus only where it always is (it does not read DBUS_SYSTEM_BUS_ADDRESS), so the
# test's bus listens there, on a machine where no system bus runs (a CI container).
SYSTEM_BUS = Path("/run/dbus/system_bus_socket")
BUS_CONFIG = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <listen>unix:path={socket}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/><allow own="*"/><allow send_destination="*"/><allow receive_sender="*"/>
  </policy>
</busconfig>
"""
# The test's child runs as root without CAP_SYS_NICE: the rule admits root's processes.
RULE_TEXT = """polkit.addRule(function(action, subject) {
    if (action.id.indexOf("org.freedesktop.RealtimeKit1.") == 0 && subject.user == "root") {
        return polkit.Result.YES;
    }
});
"""


def missing() -> str | None:
    """Why the real rtkit cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root (polkitd, rtkit-daemon and a polkit rule)"
    if _listening(SYSTEM_BUS):
        return f"a system bus already runs here ({SYSTEM_BUS}): the test starts its own only where none does"
    for name, path in {**DAEMONS, "dbus-daemon": Path(shutil.which("dbus-daemon") or "/nonexistent"),
                       "setpriv": Path(shutil.which("setpriv") or "/nonexistent")}.items():
        if not path.exists():
            return f"{name} is not installed (apt install rtkit polkitd dbus-daemon util-linux)"
    return None


@contextlib.contextmanager
def system_bus_with_rtkit(tmp: Path):
    """Yields the bus address (for DBUS_SYSTEM_BUS_ADDRESS) once rtkit answers on it."""
    socket = SYSTEM_BUS
    socket.parent.mkdir(parents=True, exist_ok=True)
    socket.unlink(missing_ok=True)  # one no bus listens on (`missing` checked)
    (tmp / "bus.conf").write_text(BUS_CONFIG.format(socket=socket))
    address = f"unix:path={socket}"
    env = {**os.environ, "DBUS_SYSTEM_BUS_ADDRESS": address}
    procs = []
    RULE.parent.mkdir(parents=True, exist_ok=True)
    RULE.write_text(RULE_TEXT)
    try:
        procs.append(subprocess.Popen(["dbus-daemon", "--nofork", f"--config-file={tmp / 'bus.conf'}"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        _wait(lambda: socket.exists(), "the private system bus")
        for name, path in DAEMONS.items():
            # (not into a file: rtkit-daemon forbids itself to write files, and dies of SIGXFSZ if it tries)
            procs.append(subprocess.Popen([str(path), *ARGS[name]], env=env, stdout=subprocess.DEVNULL,
                                          stderr=subprocess.DEVNULL))
        _wait(lambda: _answers(address), "rtkit on the private system bus")
        yield address
    finally:
        for p in reversed(procs):
            p.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(5)
        RULE.unlink(missing_ok=True)
        socket.unlink(missing_ok=True)


def without_cap_sys_nice(argv: list[str], env: dict) -> subprocess.CompletedProcess:
    """Run argv as the current user without CAP_SYS_NICE (and no real-time rlimit): it cannot raise its own
    priority, as an ordinary user's program cannot."""
    cmd = ["setpriv", "--inh-caps=-sys_nice", "--bounding-set=-sys_nice", "prlimit", "--rtprio=0", "--", *argv]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)


def _listening(path: Path) -> bool:
    import socket

    with socket.socket(socket.AF_UNIX) as s:
        try:
            s.connect(str(path))
        except OSError:
            return False
    return True


def _answers(address: str) -> bool:
    probe = ("from jeepney import DBusAddress, Properties; from jeepney.io.blocking import open_dbus_connection\n"
             "from jeepney.wrappers import unwrap_msg\n"
             "a = DBusAddress('/org/freedesktop/RealtimeKit1', bus_name='org.freedesktop.RealtimeKit1', "
             "interface='org.freedesktop.RealtimeKit1')\n"
             "with open_dbus_connection(bus='SYSTEM') as c:\n"
             "    unwrap_msg(c.send_and_get_reply(Properties(a).get('MaxRealtimePriority'), timeout=1))\n")
    r = subprocess.run([sys.executable, "-c", probe], env={**os.environ, "DBUS_SYSTEM_BUS_ADDRESS": address},
                       capture_output=True, timeout=30)
    return r.returncode == 0


def _wait(ok, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not ok():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not start within {timeout:.0f} s")
        time.sleep(0.1)
