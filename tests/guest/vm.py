"""Booting the guest: QEMU with Debian's kernel, the host's root shared read-only, a results folder shared
read-write, and a script of ours as the guest's first process.

Software emulation (TCG) is the default: /dev/kvm on the development machines is a paravirtual hypervisor
that cannot run a stock kernel. `AVATAR_GUEST_KVM=1` asks for KVM where it really works. QEMU always runs
under a time limit, so a guest that hangs is killed and the caller still gets the console log.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from kit import GuestKit, GuestKitMissing

QEMU = "qemu-system-x86_64"
TCG_CPU = "max,-avx,-avx2,-fma,-f16c"  # see _accel


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
    # No AVX: TCG emulates AVX/AVX2 far slower than SSE, and numpy, OpenCV and soxr pick AVX2 kernels when the CPU
    # offers them. Guest/host time with `-cpu max` -> without AVX (measured side by side, 320x180 frames): numpy
    # 57x -> 35x, cv2.resize 96x -> 24x, BGR->I420 79x -> 35x, soxr 67x -> 28x; plain Python ~10x either way.
    return ["-accel", "tcg,thread=multi", "-cpu", TCG_CPU]


GUEST_OWN = ("/tmp", "/var/tmp", "/run")  # the guest mounts folders of its own there (initramfs_init.sh)


def hidden_in_guest(paths: list[Path]) -> list[str]:
    """The host folders the guest must be shown explicitly: for each of `paths` under one of the guest's own
    folders (a clean clone in /tmp, its venv), the folder just below that one (/tmp/ci-clone)."""
    shown = set()
    for path in paths:
        parts = Path(os.path.abspath(path)).parts
        for own in GUEST_OWN:
            depth = len(Path(own).parts)
            if parts[:depth] == Path(own).parts and len(parts) > depth:
                shown.add(str(Path(*parts[: depth + 1])))
    if any("," in s or " " in s for s in shown):
        raise GuestKitMissing(f"the guest cannot be shown a folder whose name has a comma or a space: {sorted(shown)}")
    return sorted(shown)


def qemu_command(kit: GuestKit, guest_main: Path, results: Path, show: list[Path] = (),
                 memory: str = "6G") -> list[str]:
    """`show`: host paths the guest needs (the checkout, the Python), wherever they are."""
    share = "security_model=none,multidevs=remap"
    shown = hidden_in_guest([*show, guest_main, kit.root])
    return [
        qemu_available(), *_accel(), "-m", memory, "-smp", str(min(os.cpu_count() or 1, 2)),
        "-nographic", "-no-reboot", "-nic", "none",
        "-kernel", str(kit.vmlinuz), "-initrd", str(kit.initrd),
        "-append", f"console=ttyS0 panic=-1 quiet guest_main={guest_main}"
                   + (f" guest_show={','.join(shown)}" if shown else ""),
        "-virtfs", f"local,path=/,mount_tag=hostroot,{share},readonly=on",
        "-virtfs", f"local,path={results},mount_tag=results,{share}",
    ]


def boot(kit: GuestKit, guest_main: Path, results: Path, timeout_s: float, pause_file: Path | None = None,
         show: list[Path] = ()) -> Boot:
    """Run the guest until it powers off (or `timeout_s`); its console goes to results/console.log.

    While `pause_file` exists (a shared machine's "quiet, benchmarks running" flag) QEMU is stopped
    (SIGSTOP) and the time limit waits too. QEMU is killed, whatever happens, when this returns.
    """
    results.mkdir(parents=True, exist_ok=True)
    console = results / "console.log"
    start = time.monotonic()
    deadline = start + timeout_s
    with console.open("wb") as out:
        qemu = subprocess.Popen(qemu_command(kit, guest_main, results, show), stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT)
        try:
            while qemu.poll() is None and time.monotonic() < deadline:
                if pause_file is not None and pause_file.exists():
                    deadline += _paused_while(qemu, pause_file)
                time.sleep(0.5)
        finally:
            timed_out = qemu.poll() is None
            if timed_out:
                qemu.kill()
            qemu.wait()
    returncode = 124 if timed_out else qemu.returncode
    return Boot(returncode, time.monotonic() - start, console.read_text(errors="replace"))


def _paused_while(qemu: subprocess.Popen, pause_file: Path) -> float:
    """Stop QEMU until pause_file is gone; returns the seconds it was stopped."""
    began = time.monotonic()
    qemu.send_signal(signal.SIGSTOP)
    try:
        while pause_file.exists() and qemu.poll() is None:
            time.sleep(5)
    finally:
        qemu.send_signal(signal.SIGCONT)
    return time.monotonic() - began
