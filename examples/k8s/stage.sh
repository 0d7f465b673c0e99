#!/usr/bin/env bash
# Stages the build contexts of the two images, with nothing fetched from a registry:
#   lightchain: the binary, the shared libraries `ldd` lists, and a static busybox
#               (only for the startupProbe and the postStart hook)
#   app:        a static busybox, for the example app that uses `cat` and `echo` only
#
#   examples/k8s/stage.sh BINARY OUTDIR
#   podman build -f examples/k8s/Containerfile     -t localhost/lightchain:dev     OUTDIR/lightchain
#   podman build -f examples/k8s/app.Containerfile -t localhost/lightchain-app:dev OUTDIR/app
#
# Needs: ldd (libc-bin) and busybox-static (`apt-get install busybox-static`).
set -euo pipefail
binary=${1:?usage: stage.sh BINARY OUTDIR}
out=${2:?usage: stage.sh BINARY OUTDIR}
busybox=${BUSYBOX:-/bin/busybox}

if ! "$busybox" --list >/dev/null 2>&1 || ldd "$busybox" >/dev/null 2>&1; then
  echo "stage.sh: $busybox is not a static busybox (apt-get install busybox-static)" >&2
  exit 1
fi

stage_busybox() { # ROOTFS: /bin/busybox plus one symlink per applet
  mkdir -p "$1/bin" "$1/tmp"
  cp "$busybox" "$1/bin/busybox"
  for applet in $("$busybox" --list); do
    [ "$applet" = busybox ] || ln -sf busybox "$1/bin/$applet"
  done
}

rm -rf "$out/lightchain" "$out/app"
mkdir -p "$out/lightchain/rootfs/usr/local/bin" "$out/app/rootfs"

# Debug info is of no use in the image (and makes a debug build 140 MB).
if command -v strip >/dev/null 2>&1; then
  strip --strip-debug -o "$out/lightchain/rootfs/usr/local/bin/lightchain" "$binary"
else
  cp "$binary" "$out/lightchain/rootfs/usr/local/bin/lightchain"
fi
# Every library the dynamic loader will look for, at the path it will look at (the loader included).
for lib in $(ldd "$binary" | grep -o '/[^ ]*'); do
  mkdir -p "$out/lightchain/rootfs$(dirname "$lib")"
  cp -L "$lib" "$out/lightchain/rootfs$lib"
done
# Names resolve from /etc/hosts first, then DNS (without nsswitch.conf glibc asks DNS only, and a
# hostAliases entry or the pod's own name would not resolve), and a name /etc/hosts lists on several
# lines resolves to all of them (`multi on`, as on Debian), like a headless Service's DNS name.
mkdir -p "$out/lightchain/rootfs/etc"
echo "hosts: files dns" > "$out/lightchain/rootfs/etc/nsswitch.conf"
echo "multi on" > "$out/lightchain/rootfs/etc/host.conf"
stage_busybox "$out/lightchain/rootfs"
stage_busybox "$out/app/rootfs"
