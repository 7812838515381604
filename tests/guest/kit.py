"""The guest's kernel pieces: Debian's kernel, v4l2loopback built against its headers, and a tiny initramfs.

Everything is downloaded with `apt-get download` and unpacked (never installed) into a cache folder that
git ignores (`.guest-cache/` at the repository top), and reused on the next run. The kernel version is
looked up with apt-cache each time, so a new Debian kernel ABI simply builds a new kit beside the old one.
`GuestKitMissing` says why a kit cannot be had here (no apt, no package, no compiler): tests skip on it.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CACHE = REPO / ".guest-cache"
# Modules that give the guest its 9p root over virtio (their dependencies are looked up too).
ROOT_MODULES = ("virtio_pci", "9pnet_virtio", "9p", "overlay")
INIT_SCRIPT = Path(__file__).with_name("initramfs_init.sh")


class GuestKitMissing(RuntimeError):
    """A piece of the guest cannot be had on this machine (the reason is the message)."""


@dataclass(frozen=True)
class GuestKit:
    kernel_version: str
    root: Path  # the unpacked packages: boot/, lib/modules/, sbin/ (kmod), bin/busybox

    @property
    def vmlinuz(self) -> Path:
        return self.root / "boot" / f"vmlinuz-{self.kernel_version}"

    @property
    def initrd(self) -> Path:
        return self.root.parent / "initrd.gz"

    @property
    def modules(self) -> Path:
        return self.root / "lib" / "modules" / self.kernel_version


def _run(*cmd: str | Path, cwd: Path | None = None, timeout: float = 600) -> str:
    try:
        done = subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError as exc:
        raise GuestKitMissing(f"{cmd[0]} is not installed ({exc})") from None
    if done.returncode != 0:
        raise GuestKitMissing(f"`{' '.join(map(str, cmd))}` failed: {(done.stderr or done.stdout).strip()[-800:]}")
    return done.stdout


def kernel_version() -> str:
    """The ABI of Debian's current `linux-image-amd64`, e.g. 6.1.0-57-amd64."""
    out = _run("apt-cache", "depends", "linux-image-amd64")
    found = re.search(r"Depends: linux-image-(\d[^\s]*)", out)
    if not found:
        raise GuestKitMissing(f"apt-cache does not name a kernel for linux-image-amd64: {out.strip()[:200]}")
    return found.group(1)


def _header_packages(kver: str) -> list[str]:
    out = _run("apt-cache", "depends", f"linux-headers-{kver}")
    wanted = re.findall(r"Depends: (linux-(?:headers-[^\s]*-common[^\s]*|kbuild-[^\s]+))", out)
    return [f"linux-headers-{kver}", *wanted]


def _download_and_unpack(packages: list[str], debs: Path, root: Path) -> None:
    debs.mkdir(parents=True, exist_ok=True)
    root.mkdir(parents=True, exist_ok=True)
    for package in packages:
        if not list(debs.glob(f"{package}_*.deb")):
            _run("apt-get", "download", package, cwd=debs, timeout=900)
        (deb,) = debs.glob(f"{package}_*.deb")
        _run("dpkg-deb", "-x", deb, root)


def _fix_absolute_paths(kver: str, root: Path) -> None:
    """The headers' Makefile includes /usr/src/...; kmod's modprobe/depmod links point at /bin/kmod."""
    makefile = root / "usr" / "src" / f"linux-headers-{kver}" / "Makefile"
    text = makefile.read_text()
    makefile.write_text(re.sub(r"^include /usr/src/", f"include {root}/usr/src/", text, flags=re.M))
    for link in (root / "sbin").iterdir():
        if link.is_symlink() and Path(link.readlink()).is_absolute():
            target = Path(link.readlink())
            link.unlink()
            link.symlink_to(Path("..") / target.relative_to("/"))


def _build_v4l2loopback(kver: str, root: Path) -> None:
    (source,) = (root / "usr" / "src").glob("v4l2loopback-*")
    build = root.parent / "v4l2loopback-build"
    shutil.rmtree(build, ignore_errors=True)
    shutil.copytree(source, build)
    _run("make", "-C", root / "usr" / "src" / f"linux-headers-{kver}", f"M={build}", f"KERNELRELEASE={kver}",
         "modules", timeout=900)
    updates = root / "lib" / "modules" / kver / "updates"
    updates.mkdir(parents=True, exist_ok=True)
    shutil.copy2(build / "v4l2loopback.ko", updates / "v4l2loopback.ko")
    _run(root / "sbin" / "depmod", "-b", root, kver)


def _root_modules(kver: str, root: Path) -> list[Path]:
    """The .ko files for a 9p root and an overlay, dependencies first (modprobe --show-depends order)."""
    out = _run(root / "sbin" / "modprobe", "-d", root, "-S", kver, "--show-depends", "-a", *ROOT_MODULES)
    files = []
    for line in out.splitlines():
        if line.startswith("insmod "):
            path = Path(line.split()[1])
            if path not in files:
                files.append(path)
    return files


def _build_initramfs(kit: GuestKit) -> None:
    """busybox-static, the root modules and /init, packed as a gzip'd newc cpio with busybox's own cpio."""
    tree = kit.root.parent / "initramfs"
    shutil.rmtree(tree, ignore_errors=True)
    for sub in ("bin", "dev", "proc", "sys", "newroot", "modules"):
        (tree / sub).mkdir(parents=True)
    busybox = kit.root / "bin" / "busybox"
    shutil.copy2(busybox, tree / "bin" / "busybox")
    (tree / "bin" / "sh").symlink_to("busybox")
    order = []
    for module in _root_modules(kit.kernel_version, kit.root):
        shutil.copy2(module, tree / "modules" / module.name)
        order.append(module.name)
    (tree / "modules" / "order").write_text("\n".join(order) + "\n")
    shutil.copy2(INIT_SCRIPT, tree / "init")
    (tree / "init").chmod(0o755)
    names = subprocess.run(["find", "."], cwd=tree, capture_output=True, text=True, check=True).stdout
    packed = subprocess.run([str(busybox), "cpio", "-o", "-H", "newc"], cwd=tree, input=names.encode(),
                            capture_output=True, check=True).stdout
    kit.initrd.write_bytes(subprocess.run(["gzip", "-1"], input=packed, capture_output=True, check=True).stdout)


def build_kit(cache: Path = CACHE) -> GuestKit:
    """The kit for Debian's current kernel, built once into `cache` and reused."""
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        raise GuestKitMissing("apt-get and dpkg-deb are needed to fetch Debian's kernel (this is not Debian/Ubuntu)")
    kver = kernel_version()
    kit = GuestKit(kver, cache / kver / "root")
    if not (kit.modules / "updates" / "v4l2loopback.ko").exists():
        shutil.rmtree(kit.root, ignore_errors=True)
        packages = [f"linux-image-{kver}", *_header_packages(kver), "v4l2loopback-dkms", "busybox-static", "kmod"]
        _download_and_unpack(packages, cache / "debs", kit.root)
        _fix_absolute_paths(kver, kit.root)
        _build_v4l2loopback(kver, kit.root)
    stamp = kit.initrd.with_suffix(".init")
    if not kit.initrd.exists() or not stamp.exists() or stamp.read_text() != INIT_SCRIPT.read_text():
        _build_initramfs(kit)
        stamp.write_text(INIT_SCRIPT.read_text())  # a changed /init rebuilds the initramfs
    return kit
