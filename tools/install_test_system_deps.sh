#!/usr/bin/env bash
# Installs the real parts the integration tests drive (Debian packages): GStreamer's RTSP server,
# Xvfb for screen capture, Chromium for the viewer tests, Mosquitto (MQTT outputs) and Prometheus
# (scraping /metrics). Skips what is already there.
# Needs root (CI machines run as root); without root it says what is missing and continues.
set -euo pipefail
pkgs=(
    python3-gi gir1.2-gstreamer-1.0 gir1.2-gst-rtsp-server-1.0 gstreamer1.0-rtsp
    gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-bad
    gstreamer1.0-plugins-ugly gstreamer1.0-libav
    xvfb x11-xserver-utils xterm
    chromium
    mosquitto mosquitto-clients prometheus
)
missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[[ ${#missing[@]} -eq 0 ]] && exit 0
if [[ "$(id -u)" != "0" ]]; then
    echo "vidnarrate: not root; integration tests need: ${missing[*]}" >&2
    exit 0
fi
echo "vidnarrate: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
