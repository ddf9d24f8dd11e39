#!/usr/bin/env bash
# Renders a two-run comparison report in headless Chromium to a PNG, as a
# person would see it, and checks that the page rendered (non-trivial PNG).
# Usage: scripts/render-report.sh [OUT_DIR]   (needs the Debian package `chromium`)
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-target/render-report}"
rm -rf "$out" && mkdir -p "$out" && out="$(cd "$out" && pwd)"
bin="${CARGO_TARGET_DIR:-target}/debug/gradscope"
[ -x "$bin" ] || cargo build -q --workspace
"$bin" train --preset mlp-sigmoid-6x64 --max-steps 60 --log-every 5 --quiet --out "$out/sigmoid" >/dev/null
"$bin" train --preset mlp-relu-6x64 --max-steps 60 --log-every 5 --quiet --out "$out/relu" >/dev/null
"$bin" compare "$out/sigmoid" "$out/relu" --out "$out/report" >/dev/null
chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
  --disable-background-networking --disable-component-update --disable-sync \
  --user-data-dir="$out/chromium-profile" --window-size=1000,5200 \
  --screenshot="$out/report.png" "file://$out/report/report.html" 2>/dev/null
size=$(stat -c %s "$out/report.png")
if [ "$size" -lt 100000 ]; then
  echo "render-report: $out/report.png is only $size bytes; the page did not render" >&2
  exit 1
fi
echo "render-report: $out/report.png ($size bytes)"
