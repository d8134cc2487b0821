#!/bin/bash
# build-boot.sh OUT: a bootable kernel with the WireGuard module for tests/kernel (sandbox/testkit/kernelguest.py).
# Writes OUT/vmlinuz and OUT/initramfs.cpio.gz from Debian's stock amd64 kernel package (the one
# linux-image-amd64 depends on): busybox-static plus only the modules the guest needs (9p over virtio
# for the host root, wireguard, veth, tun, netfilter). Needs apt's package lists, busybox-static and
# kmod's depmod; touches nothing outside OUT. About 7 s; the .deb is kept for the next build.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
OUT=$(mkdir -p "$1" && cd "$1" && pwd)
PKG=${KERNEL_PACKAGE:-$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-/{print $2; exit}')}
[ -n "$PKG" ] || { echo "build-boot.sh: no linux-image-amd64 in apt's lists (apt-get update?)" >&2; exit 1; }
cd "$OUT"
if [ ! -f "$PKG.deb" ]; then
  rm -f ./*.deb
  apt-get download -o APT::Sandbox::User=root "$PKG" >/dev/null
  mv "$PKG"_*.deb "$PKG.deb"
fi
rm -rf deb initramfs && dpkg-deb -x "$PKG.deb" deb
VER=$(ls deb/lib/modules); SRC=deb/lib/modules/$VER
cp "deb/boot/vmlinuz-$VER" vmlinuz.new
depmod -b deb "$VER"  # the package ships no modules.dep
# Loaded at boot: the transport for the host root, then the dataplane. crc32c first: busybox modprobe
# ignores soft dependencies.
PRELOAD="crc32c_generic crc32c-intel virtio_pci 9pnet_virtio 9p wireguard veth tun dummy
 ip_tables iptable_nat iptable_filter iptable_mangle iptable_raw x_tables nf_nat nf_conntrack
 xt_NETMAP xt_nat xt_MASQUERADE xt_conntrack xt_comment xt_mark xt_addrtype xt_multiport xt_CT xt_state"
# Every netfilter module too, for on-demand loads (the kernel's modprobe helper, see init).
EXTRA=$(cd "$SRC" && find kernel/net/netfilter kernel/net/ipv4/netfilter kernel/net/ipv6/netfilter \
  -name '*.ko' | sed 's,.*/,,;s,\.ko$,,')
R=$OUT/initramfs; mkdir -p "$R"/{bin,sbin,proc,sys,dev,host,lib/modules/"$VER"}
declare -A seen
add() {
  local rel=$1 d; [ -n "${seen[$rel]:-}" ] && return; seen[$rel]=1
  mkdir -p "$R/lib/modules/$VER/$(dirname "$rel")"; cp "$SRC/$rel" "$R/lib/modules/$VER/$rel"
  for d in $(awk -v m="$rel:" '$1==m{for(i=2;i<=NF;i++)print $i}' "$SRC/modules.dep"); do add "$d"; done
}
for m in $PRELOAD $EXTRA; do
  rel=$(awk -F: -v m="$m" '{n=$1; sub(/.*\//,"",n); sub(/\.ko$/,"",n); gsub("-","_",n); mm=m; gsub("-","_",mm);
        if(n==mm){print $1; exit}}' "$SRC/modules.dep")
  if [ -n "$rel" ]; then add "$rel"
  elif ! grep -q "/$m.ko" "$SRC/modules.builtin"; then echo "build-boot.sh: no module $m" >&2; fi
done
cp "$SRC"/modules.builtin* "$SRC"/modules.order "$R/lib/modules/$VER/"
depmod -b "$R" "$VER"
echo "$PRELOAD" | tr ' ' '\n' | grep -v '^$' > "$R/modules.preload"
cp "$(command -v busybox)" "$R/bin/busybox"
cp "$HERE/init" "$R/init"; chmod +x "$R/init"
(cd "$R" && find . | ./bin/busybox cpio -o -H newc 2>/dev/null | gzip -1) > initramfs.cpio.gz.new
rm -rf deb initramfs
mv vmlinuz.new vmlinuz; mv initramfs.cpio.gz.new initramfs.cpio.gz; echo "$VER" > kernel-release
echo "kernel $VER: $OUT/vmlinuz, $OUT/initramfs.cpio.gz ($(du -h initramfs.cpio.gz | cut -f1))"
