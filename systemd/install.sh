#!/usr/bin/env bash
# Installs clipcap as a systemd service, in FHS places:
#   /usr/bin/clipcap                        the daemon and CLI
#   /usr/lib/clipcap/libonnxruntime.so      ONNX Runtime (and its providers_shared library if present)
#   /usr/lib/clipcap/plugins/*.so           the decoder plugins
#   /usr/share/clipcap/bundle/              the model bundle
#   /etc/clipcap/config.toml                config.toml with those paths; kept if it exists
#   /usr/lib/systemd/system/clipcap.service the unit
# Run after scripts/setup.sh, as root; then `systemctl enable --now clipcap`.
# Environment: DESTDIR (a staging root, for packaging), BUILD (the folder with clipcap and the
# plugins; target/release), ONNXRUNTIME (default $BUILD/libonnxruntime.so), BUNDLE (demo/bundle).
set -euo pipefail
cd "$(dirname "$0")/.."
dest=${DESTDIR:-}
build=${BUILD:-target/release}
ort=${ONNXRUNTIME:-$build/libonnxruntime.so}
bundle=${BUNDLE:-demo/bundle}
plugins=(search sampling contrastive)
need=("$build/clipcap" "$ort" "$bundle/manifest.toml")
for p in "${plugins[@]}"; do need+=("$build/libclipcap_$p.so"); done
for f in "${need[@]}"; do
    [ -e "$f" ] || { echo "install: $f is missing (run scripts/setup.sh)" >&2; exit 1; }
done

install -D -m 0755 "$build/clipcap" "$dest/usr/bin/clipcap"
install -D -m 0644 "$ort" "$dest/usr/lib/clipcap/libonnxruntime.so"
shared=$(dirname "$(readlink -f "$ort")")/libonnxruntime_providers_shared.so
[ ! -e "$shared" ] || install -m 0644 "$shared" "$dest/usr/lib/clipcap/"
for p in "${plugins[@]}"; do
    install -D -m 0644 "$build/libclipcap_$p.so" "$dest/usr/lib/clipcap/plugins/libclipcap_$p.so"
done
rm -rf "$dest/usr/share/clipcap/bundle"
install -d "$dest/usr/share/clipcap/bundle"
install -m 0644 "$bundle"/* "$dest/usr/share/clipcap/bundle/"
install -D -m 0644 systemd/clipcap.service "$dest/usr/lib/systemd/system/clipcap.service"

config=$dest/etc/clipcap/config.toml
if [ -e "$config" ]; then
    echo "kept $config"
else
    install -d "$dest/etc/clipcap"
    sed -e 's|^bundle = ""|bundle = "/usr/share/clipcap/bundle"|' \
        -e 's|^caption_log = ""|caption_log = "/var/log/clipcap/captions.jsonl"|' \
        -e 's|^onnxruntime_library = ""|onnxruntime_library = "/usr/lib/clipcap/libonnxruntime.so"|' \
        -e 's|^directories = \["plugins"\]|directories = ["/usr/lib/clipcap/plugins"]|' \
        config.toml > "$config.new"
    # Each default above must have been found: config.toml and this script change together.
    for key in bundle caption_log onnxruntime_library directories; do
        grep -q "^$key = .*/" "$config.new" ||
            { echo "install: config.toml's $key default changed; update systemd/install.sh" >&2; exit 1; }
    done
    chmod 0644 "$config.new" && mv "$config.new" "$config"
fi
[ -n "$dest" ] || systemctl daemon-reload
echo "installed under ${dest:-/}"
