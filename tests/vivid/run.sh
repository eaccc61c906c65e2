#!/usr/bin/env bash
# Boots Debian's kernel in qemu (software emulation; KVM is not needed) with an initramfs holding
# busybox, the vivid virtual camera module and its dependencies, clipcap with its shared libraries,
# the greedy decoder plugin, a bundle, and v4l2-ctl. The VM's init (tests/vivid/init) reports on the
# serial console, which is this script's standard output. scripts/setup-lab.sh fetches the kernel.
# usage: run.sh WORKDIR CLIPCAP PLUGIN_DIR BUNDLE_DIR LIBONNXRUNTIME [MEASURE_SECONDS]
# With MEASURE_SECONDS, the VM measures the daemon's CPU time instead (scripts/capture_cpu.sh).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
vm=$here/../../.cache/vm
work=$1 clipcap=$2 plugins=$3 bundle=$4 ort=$5 measure=${6:+clipcap_measure=$6}
[ -f "$vm/vmlinuz" ] || { echo "no kernel in $vm: run scripts/setup-lab.sh" >&2; exit 2; }
for tool in qemu-system-x86_64 busybox objcopy strings ldd v4l2-ctl; do
    command -v $tool >/dev/null || { echo "$tool is missing: run scripts/setup-lab.sh" >&2; exit 2; }
done

ldd "$(command -v busybox)" >/dev/null 2>&1 && { echo "busybox is not static: install busybox-static" >&2; exit 2; }

root=$work/root
rm -rf "$root"
mkdir -p "$root"/{bin,dev,proc,sys,tmp,modules,clipcap/plugins}
cp "$(command -v busybox)" "$root/bin/busybox"
install -m 0755 "$here/init" "$root/init"
cp "$here/config.toml.in" "$root/clipcap/"
objcopy --strip-debug "$clipcap" "$root/clipcap/clipcap"
objcopy --strip-debug "$plugins/libclipcap_search.so" "$root/clipcap/plugins/libclipcap_search.so"
chmod 0644 "$root/clipcap/plugins/libclipcap_search.so"
cp -rL "$bundle" "$root/clipcap/bundle"
cp -L "$ort" "$root/clipcap/libonnxruntime.so"
v4l2ctl=$(command -v v4l2-ctl)  # to unplug the camera (v4l-utils)
cp "$v4l2ctl" "$root/bin/"
# The shared libraries of clipcap, ONNX Runtime and v4l2-ctl, at the paths the host has them.
for lib in $( (ldd "$clipcap"; ldd "$ort"; ldd "$v4l2ctl") | grep -o '/[^ ]*' | sort -u); do
    cp -L --parents "$lib" "$root"
done

# vivid and its dependencies in load order. The kernel package has no modules.dep (depmod makes it
# on install), so read each module's "depends=" field.
declare -A seen=()
order=()
visit() {
    local m=$1 file
    [ -n "${seen[$m]:-}" ] && return
    seen[$m]=1
    file=$(find "$vm/media" -name "$m.ko" -o -name "${m//_/-}.ko" | head -n 1)
    [ -n "$file" ] || { echo "module $m not found under $vm/media" >&2; exit 2; }
    for dep in $(strings -a "$file" | sed -n 's/^depends=//p' | tr ',' ' '); do visit "$dep"; done
    cp "$file" "$root/modules/$m.ko"
    order+=("$m")
}
visit vivid
printf '%s\n' "${order[@]}" | grep -vx vivid > "$root/modules/order"

(cd "$root" && find . | busybox cpio -o -H newc -R 0:0 2>/dev/null) > "$work/initramfs.cpio"
exec qemu-system-x86_64 -accel tcg -cpu max -smp 2 -m 2048 -no-reboot -nodefaults -display none \
    -monitor none -serial stdio -kernel "$vm/vmlinuz" -initrd "$work/initramfs.cpio" \
    -append "console=ttyS0 panic=-1 quiet loglevel=3 rdinit=/init $measure"
