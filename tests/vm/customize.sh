#!/bin/bash
# mmdebstrap --customize-hook for the VM image: $1 is the new root. It only writes files:
# nothing is started, no systemctl runs (the host is not booted with systemd).
set -euo pipefail
R=$1
HERE=$(cd "$(dirname "$0")" && pwd)

echo ctvm >"$R/etc/hostname"
printf '127.0.0.1 localhost\n127.0.1.1 ctvm\n::1 localhost ip6-localhost ip6-loopback\n' >"$R/etc/hosts"
# Root is virtio-blk vda. Files come in and results go out on a second ext4 disk (label
# vmshare): the cloud kernel has no 9p and this host has no vsock. A short device timeout made
# udev under TCG miss the disk once, so it is long.
cat >"$R/etc/fstab" <<'FSTAB'
/dev/vda       /           ext4  rw,errors=remount-ro                     0 1
LABEL=vmshare  /mnt/share  ext4  rw,nofail,x-systemd.device-timeout=120s  0 2
FSTAB
mkdir -p "$R/mnt/share"
echo LANG=C.UTF-8 >"$R/etc/default/locale"
# A fixed machine-id: no boot is a first boot, and the journal is persistent under one id.
echo 5e1f0c0ffee0400d8bad0c0ffee0400d >"$R/etc/machine-id"
ln -sf /lib/systemd/system/multi-user.target "$R/etc/systemd/system/default.target"
# Passwordless root with serial autologin, for `run-vm.sh -i` (the VM has no network).
sed -i 's/^root:[^:]*:/root::/' "$R/etc/shadow"
mkdir -p "$R/etc/systemd/system/serial-getty@ttyS0.service.d"
cat >"$R/etc/systemd/system/serial-getty@ttyS0.service.d/autologin.conf" <<'GETTY'
[Service]
ExecStart=
ExecStart=-/sbin/agetty --autologin root --noclear --keep-baud 115200,57600,38400,9600 %I $TERM
GETTY
install -m 0755 "$HERE/guest/vmtest-runner" "$R/usr/local/sbin/vmtest-runner"
install -m 0644 "$HERE/guest/vmtest.service" "$R/etc/systemd/system/vmtest.service"
mkdir -p "$R/etc/systemd/system/multi-user.target.wants"
ln -sf /etc/systemd/system/vmtest.service "$R/etc/systemd/system/multi-user.target.wants/vmtest.service"
