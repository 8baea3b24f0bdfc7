#!/bin/bash
# Boot the test VM once: SHARE_DIR/run.sh runs in it as root under a real systemd (PID 1), the
# VM powers off, and SHARE_DIR/out comes back (rc, run.log, boot.txt, journal.txt, console.log).
#
#   usage: tests/vm/run-vm.sh [-i] IMAGE_DIR SHARE_DIR [TIMEOUT_S]
#          tests/vm/run-vm.sh --accel    prints kvm or tcg: what a run here would use
#     IMAGE_DIR  from tests/vm/image.sh (rootfs.img, vmlinuz, initrd.img); booted as a
#                throw-away snapshot, so every run starts from the cached image
#     SHARE_DIR  copied into an ext4 disk (mkfs.ext4 -d: no root, no loop mount) that the VM
#                mounts at /mnt/share; its out/ is read back with debugfs (no mount either)
#     -i         interactive serial console (root autologin, nothing runs; Ctrl-a x quits)
#   exit: run.sh's status; 124 the VM ran out of time; 125 run.sh never ran.
#   env: VM_ACCEL=auto|kvm|tcg  VM_MEM=2048  VM_CPUS=2  VM_APPEND (more kernel arguments)
set -euo pipefail
# KVM only with real hardware virtualisation: a /dev/kvm from kvm_pvm (software nested
# virtualisation) runs only PVM guest kernels, and Debian's hangs in its decompressor there.
accel() {
  case ${VM_ACCEL:-auto} in
    kvm) echo "-accel kvm -cpu host" ;;
    tcg) echo "-accel tcg,thread=multi -cpu max" ;;
    auto)
      if [[ -w /dev/kvm && ! -d /sys/module/kvm_pvm ]] && grep -qw -e vmx -e svm /proc/cpuinfo; then
        echo "-accel kvm -cpu host"
      else
        echo "-accel tcg,thread=multi -cpu max"
      fi ;;
    *) echo "run-vm.sh: VM_ACCEL must be auto, kvm or tcg" >&2; exit 2 ;;
  esac
}
# --accel: print the accelerator a run would use (kvm or tcg) and exit.
[[ ${1:-} == --accel ]] && { read -ra a <<<"$(accel)"; echo "${a[1]%%,*}"; exit 0; }
INTERACTIVE=0
[[ ${1:-} == -i ]] && { INTERACTIVE=1; shift; }
(($# >= 2)) || { sed -n '2,14p' "$0"; exit 2; }
IMG=$(realpath "$1")
SHARE=$(realpath "$2")
TMO=${3:-1800}
for f in rootfs.img vmlinuz initrd.img; do [[ -e $IMG/$f ]] || { echo "run-vm.sh: missing $IMG/$f (tests/vm/image.sh)" >&2; exit 2; }; done

read -ra ACCEL <<<"$(accel)"

RUN=$(mktemp -d "${TMPDIR:-/tmp}/ctvm-run.XXXXXX")
QPID=""
cleanup() {
  [[ -n $QPID ]] && kill "$QPID" 2>/dev/null
  rm -rf "$RUN"
}
trap cleanup EXIT

rm -rf "$SHARE/out"
used_mb=$(du -sm --apparent-size "$SHARE" | cut -f1)
mkfs.ext4 -q -F -L vmshare -E root_owner=0:0 -d "$SHARE" "$RUN/share.img" "$((used_mb * 12 / 10 + 1024))M"

# no_timer_check: on a loaded host the kernel's IO-APIC timer check can time out under TCG
# ("IO-APIC + timer doesn't work!" panic, seen here once).
APPEND="root=/dev/vda rw console=ttyS0 panic=-1 loglevel=4 no_timer_check vmtest.timeout=$TMO ${VM_APPEND:-}"
ARGS=(-name ctvm -machine q35 "${ACCEL[@]}" -smp "${VM_CPUS:-2}" -m "${VM_MEM:-2048}"
  -nodefaults -no-user-config -display none -nic none -no-reboot
  -kernel "$IMG/vmlinuz" -initrd "$IMG/initrd.img"
  -drive "file=$IMG/rootfs.img,format=raw,if=virtio,snapshot=on,cache=unsafe"
  -drive "file=$RUN/share.img,format=raw,if=virtio,cache=unsafe"
  -device virtio-rng-pci)
if ((INTERACTIVE)); then
  qemu-system-x86_64 "${ARGS[@]}" -serial mon:stdio -append "$APPEND vmtest.manual"
  exit
fi
t0=$(date +%s)
# The guest's own limit is TMO for run.sh; the host allows boot and power-off on top.
qemu-system-x86_64 "${ARGS[@]}" -serial "file:$RUN/console.log" -append "$APPEND" &
QPID=$!
qrc=0
timeout_at=$((t0 + TMO + 300))
while kill -0 "$QPID" 2>/dev/null; do
  if (($(date +%s) > timeout_at)); then kill "$QPID"; qrc=124; break; fi
  sleep 1
done
wait "$QPID" 2>/dev/null || true
QPID=""
debugfs -R "rdump /out $SHARE" "$RUN/share.img" >/dev/null 2>&1 || true
mkdir -p "$SHARE/out"
cp "$RUN/console.log" "$SHARE/out/console.log" 2>/dev/null || true
echo "accel: ${ACCEL[*]}; VM wall time: $(($(date +%s) - t0)) s" >"$SHARE/out/host.txt"
((qrc == 124)) && { echo "run-vm.sh: VM timed out (see $SHARE/out/console.log)" >&2; exit 124; }
exit "$(cat "$SHARE/out/rc" 2>/dev/null || echo 125)"
