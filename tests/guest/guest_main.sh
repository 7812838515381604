#!/bin/sh
# The guest's first process (PID 1), started by the initramfs with the host's root (under a tmpfs overlay)
# as /. It readies the few things a desktop would have (/dev/pts, /dev/shm, loopback network, the kernel's
# modules), runs the checks (in_guest.py) with a time limit, and always powers the guest off.
# /tmp/results/job.env (written by the host) names the Python, the modules and busybox.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8
. /tmp/results/job.env
export PYTHONPATH="$GUEST_REPO"  # this checkout of the product, whatever the Python has installed
mkdir -p /dev/pts /dev/shm && mount -t devpts devpts /dev/pts && mount -t tmpfs shm /dev/shm
ip link set lo up
mkdir -p /lib/modules && mount --bind "$GUEST_MODULES" /lib/modules
echo "guest: up after $(cut -d' ' -f1 /proc/uptime) s"
timeout -k 5 "$GUEST_TIMEOUT_S" "$GUEST_PYTHON" "$GUEST_CHECKS" /tmp/results >/tmp/results/guest.log 2>&1
echo "$?" >/tmp/results/exit_code
echo "guest: checks done after $(cut -d' ' -f1 /proc/uptime) s (exit $(cat /tmp/results/exit_code))"
sync
"$GUEST_BUSYBOX" poweroff -f
