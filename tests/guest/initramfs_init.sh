#!/bin/sh
# /init of the guest's initramfs (busybox): mount the host's root read-only over 9p under a writable overlay
# (a tmpfs upper, so an install script can write /etc and /lib/modules), tmpfs on /tmp, /run and /var/tmp,
# the read-write results share on /tmp/results, the host's folders named by `guest_show=` (comma-separated:
# a checkout or a venv under the host's /tmp, which the guest's own /tmp would hide) bound in read-only, then hand
# over to the script named by `guest_main=` on the kernel command line (the kernel passes both in our
# environment). Any failure powers the guest off.
/bin/busybox --install -s /bin
fail() { echo "guest init: $*"; poweroff -f; }
mount -t proc proc /proc && mount -t sysfs sys /sys && mount -t devtmpfs dev /dev || fail "proc/sys/dev"
while read -r module; do insmod "/modules/$module" || fail "insmod $module"; done </modules/order
mkdir -p /lower /rw
opts=trans=virtio,version=9p2000.L,msize=512000
mount -t 9p -o "ro,$opts,cache=loose" hostroot /lower || fail "9p root"
mount -t tmpfs -o size=2g rw /rw && mkdir /rw/upper /rw/work || fail "overlay tmpfs"
mount -t overlay -o lowerdir=/lower,upperdir=/rw/upper,workdir=/rw/work overlay /newroot || fail "overlay"
for d in tmp run var/tmp; do mount -t tmpfs tmpfs "/newroot/$d" || fail "tmpfs $d"; done
mkdir /newroot/tmp/results && mount -t 9p -o "$opts" results /newroot/tmp/results || fail "results share"
for d in $(echo "${guest_show:-}" | tr , ' '); do
    mkdir -p "/newroot$d" && mount --bind "/lower$d" "/newroot$d" || fail "show $d"
done
for d in dev proc sys; do mount --move "/$d" "/newroot/$d"; done
[ -n "$guest_main" ] || fail "no guest_main= on the kernel command line"
exec switch_root /newroot /bin/sh "$guest_main"
