#!/usr/bin/env bash
# Render an HTML report in headless Chromium (Debian's package) to a PNG, to look at it as a user would:
#   bash tools/report_screenshot.sh report.html [out.png] [width] [height]
# Installs chromium with apt-get when it is missing. No network is used by the page (it is self-contained).
set -euo pipefail
page="$(realpath "$1")"; out="${2:-${1%.html}.png}"; width="${3:-1300}"; height="${4:-6000}"
command -v chromium >/dev/null || { apt-get update -qq && apt-get install -y -qq chromium; }
chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run --disable-background-networking \
  --disable-component-update --disable-sync --hide-scrollbars --user-data-dir="$(mktemp -d)" \
  --window-size="$width,$height" --screenshot="$(realpath -m "$out")" "file://$page" 2>/dev/null
echo "wrote $out"
