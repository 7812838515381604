"""Booting the guest: QEMU with Debian's kernel, the host's root shared read-only, a results folder shared
read-write, and a script of ours as the guest's first process.

Software emulation (TCG) is the default: /dev/kvm on the development machines is a paravirtual hypervisor
that cannot run a stock kernel. `AVATAR_GUEST_KVM=1` asks for KVM where it really works. QEMU always runs
under `timeout`, so a guest that hangs is killed and the caller still gets the console log.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from kit import GuestKit, GuestKitMissing

QEMU = "qemu-system-x86_64"


@dataclass
class Boot:
    returncode: int  # QEMU's, or 124 when `timeout` killed it
    seconds: float
    console: str

    @property
    def timed_out(self) -> bool:
        return self.returncode == 124


def qemu_available() -> str:
    """Path to QEMU, or GuestKitMissing with the reason."""
    path = shutil.which(QEMU)
    if path is None:
        raise GuestKitMissing(f"{QEMU} is not installed (apt-get install qemu-system-x86)")
    return path


def _accel() -> list[str]:
    if os.environ.get("AVATAR_GUEST_KVM") == "1" and os.access("/dev/kvm", os.R_OK | os.W_OK):
        return ["-accel", "kvm", "-cpu", "host"]
    return ["-accel", "tcg,thread=multi", "-cpu", "max"]


def qemu_command(kit: GuestKit, guest_main: Path, results: Path, memory: str = "4G") -> list[str]:
    share = "security_model=none,multidevs=remap"
    return [
        qemu_available(), *_accel(), "-m", memory, "-smp", str(min(os.cpu_count() or 1, 2)),
        "-nographic", "-no-reboot", "-nic", "none",
        "-kernel", str(kit.vmlinuz), "-initrd", str(kit.initrd),
        "-append", f"console=ttyS0 panic=-1 quiet guest_main={guest_main}",
        "-virtfs", f"local,path=/,mount_tag=hostroot,{share},readonly=on",
        "-virtfs", f"local,path={results},mount_tag=results,{share}",
    ]


def boot(kit: GuestKit, guest_main: Path, results: Path, timeout_s: float) -> Boot:
    """Run the guest until it powers off (or `timeout_s`); its console goes to results/console.log."""
    results.mkdir(parents=True, exist_ok=True)
    console = results / "console.log"
    start = time.monotonic()
    with console.open("wb") as out:
        done = subprocess.run(["timeout", "-k", "10", str(int(timeout_s)), *qemu_command(kit, guest_main, results)],
                              stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
    return Boot(done.returncode, time.monotonic() - start, console.read_text(errors="replace"))
