#!/bin/bash
# Runs a STATIC x86-64 Linux binary that uses AVX-512 under Bochs 2.7 (Debian's package, whose
# CPU models decode EVEX) on any x86-64 machine: boots Debian's 6.1 kernel with a busybox
# initramfs holding the binary, and prints the program's output; exits with its exit code.
# This is how flowers' AVX-512 kernels were run on a CPU without AVX-512 (BENCHMARKS.md):
#
#   RUSTFLAGS="-C target-feature=+crt-static" CARGO_TARGET_DIR=/tmp/static \
#       cargo test --release --lib --no-run --target x86_64-unknown-linux-gnu
#   EXTRA="$PWD/tests/data/flower_sample/daisy/10172379554_b296050f82_n.jpg" \
#       bench/avx512_under_bochs.sh /tmp/static/x86_64-unknown-linux-gnu/release/deps/flowers-HASH \
#       --test-threads 1 backbone::accel
#
# Setup once (Debian 12, as root): apt-get install bochs bochsbios vgabios isolinux
# syslinux-common xorriso busybox-static cpio; the kernel is unpacked into $EMU/kern by this
# script (apt-get download linux-image-6.1.0-*-amd64). Each run takes 3-15 min (the kernel boot
# is about 2.5 of them); run one at a time. QEMU 7.2 and 10.0 cannot run AVX-512 code.
# Env: EXTRA (absolute paths copied into the guest at the same paths), BOCHS_IPS (default
# 50000000), BOCHS_CPU (default corei7_skylake_x), BOCHS_TIMEOUT (s, default 1200), BOCHS_MEGS
# (default 512), KEEP=1 keeps the work dir, EMU (default /tmp/flowers-emu) for the kernel.
# The kernel flags nopku clearcpuid=321,323 work around Bochs 2.7 XSAVE CPUID bugs that
# otherwise make Linux turn AVX off entirely.
set -euo pipefail
[ $# -ge 1 ] || { echo "usage: $0 BINARY [ARGS...]" >&2; exit 2; }
BIN=$(readlink -f "$1"); shift
[ -f "$BIN" ] || { echo "no such file: $BIN" >&2; exit 2; }
file -L "$BIN" | grep -q 'statically linked\|static-pie' || echo "warning: $BIN does not look static" >&2
BASE=${EMU:-/tmp/flowers-emu}
if ! ls "$BASE"/kern/boot/vmlinuz-* >/dev/null 2>&1; then
    mkdir -p "$BASE"/kern
    pkg=$(apt-cache search --names-only '^linux-image-6\.1\.0-[0-9]+-amd64$' | sort -V | tail -1 | cut -d' ' -f1)
    (cd "$BASE"/kern && apt-get download "$pkg" && dpkg -x ./*.deb .) >&2
fi
KERNEL=$(ls "$BASE"/kern/boot/vmlinuz-* | head -1)
CPU=${BOCHS_CPU:-corei7_skylake_x}
W=$(mktemp -d /tmp/avx512emu.XXXXXX)
[ -n "${KEEP:-}" ] || trap 'rm -rf "$W"' EXIT
mkdir -p "$W"/initrd/{bin,dev,proc,sys,tmp,test} "$W"/iso/isolinux
cp /bin/busybox "$W"/initrd/bin/busybox
cp "$BIN" "$W"/initrd/test/prog; chmod +x "$W"/initrd/test/prog
for f in ${EXTRA:-}; do mkdir -p "$W/initrd$(dirname "$f")"; cp "$f" "$W/initrd$f"; done
: > "$W"/initrd/test/args; for a in "$@"; do printf '%s\n' "$a" >> "$W"/initrd/test/args; done
cat > "$W"/initrd/init <<'EOI'
#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t devtmpfs dev /dev 2>/dev/null
/bin/busybox mount -t tmpfs tmp /tmp
exec </dev/ttyS0 >/dev/ttyS0 2>&1
/bin/busybox stty -F /dev/ttyS0 -onlcr 2>/dev/null
set --; while IFS= read -r a; do set -- "$@" "$a"; done < /test/args
echo "@@FLAGS@@ $(/bin/busybox grep -m1 '^flags' /proc/cpuinfo | /bin/busybox tr ' ' '\n' | /bin/busybox grep -c avx512f)"
echo "@@BEGIN@@"
cd /tmp; /test/prog "$@"; rc=$?
echo ""; echo "@@END@@ rc=$rc"
/bin/busybox sleep 1; /bin/busybox poweroff -f
EOI
chmod +x "$W"/initrd/init
(cd "$W"/initrd && find . | cpio -o -H newc 2>/dev/null | gzip -1 > "$W"/iso/initrd.gz)
cp "$KERNEL" "$W"/iso/vmlinuz
cp /usr/lib/ISOLINUX/isolinux.bin /usr/lib/syslinux/modules/bios/ldlinux.c32 "$W"/iso/isolinux/
# nopku + clearcpuid=321,323 (xsavec,xsaves): works around Bochs 2.7 XSAVE CPUID bugs (PKRU leaf empty,
# wrong compacted size) that otherwise make Linux disable XSAVE -> no AVX/AVX-512 at all.
cat > "$W"/iso/isolinux/isolinux.cfg <<'EOC'
DEFAULT linux
PROMPT 0
TIMEOUT 0
LABEL linux
  KERNEL /vmlinuz
  APPEND initrd=/initrd.gz console=ttyS0,115200 quiet loglevel=3 panic=-1 mitigations=off nopku clearcpuid=321,323
EOC
xorriso -as mkisofs -quiet -o "$W"/boot.iso -b isolinux/isolinux.bin -c isolinux/boot.cat -no-emul-boot \
  -boot-load-size 4 -boot-info-table "$W"/iso 2>/dev/null
cat > "$W"/bochsrc.txt <<EOC
megs: ${BOCHS_MEGS:-512}
cpu: model=$CPU, count=1, ips=${BOCHS_IPS:-50000000}, reset_on_triple_fault=0
romimage: file=/usr/share/bochs/BIOS-bochs-latest
vgaromimage: file=/usr/share/bochs/VGABIOS-lgpl-latest
display_library: rfb, options="timeout=0"
ata0-master: type=cdrom, path=$W/boot.iso, status=inserted
boot: cdrom
com1: enabled=1, mode=file, dev=$W/out.txt
clock: sync=none, time0=local
log: $W/bochs.log
panic: action=fatal
error: action=ignore
info: action=ignore
debug: action=ignore
EOC
echo c > "$W"/dbg.rc
T0=$(date +%s)
# Debian's bochs is built with the debugger: '-rc dbg.rc' feeds 'c' (continue). rfb gui = headless (no client needed).
(cd "$W" && timeout "${BOCHS_TIMEOUT:-1200}" bochs -q -f bochsrc.txt -rc dbg.rc </dev/null >bochs.stdout 2>&1) || true
echo "[run_avx512] bochs ($CPU) took $(( $(date +%s) - T0 ))s; workdir $W" >&2
OUT="$W"/out.txt
if ! grep -q '^@@END@@ rc=' "$OUT" 2>/dev/null; then
  echo "[run_avx512] no result; serial log tail:" >&2; tail -c 3000 "$OUT" >&2 2>/dev/null || true
  tail -5 "$W"/bochs.stdout >&2; exit 125
fi
grep -q '^@@FLAGS@@ 1' "$OUT" || echo "[run_avx512] WARNING: guest kernel does not report avx512f" >&2
tr -d '\r' < "$OUT" | sed -n '/^@@BEGIN@@$/,/^@@END@@ rc=/p' | sed '1d;$d' | sed '${/^$/d}'
exit "$(tr -d '\r' < "$OUT" | sed -n 's/^@@END@@ rc=\([0-9]*\).*/\1/p')"
