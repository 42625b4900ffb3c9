#!/usr/bin/env bash
# Open a report.html in headless Chromium and check it renders: a screenshot is written (a real,
# non-blank PNG) and no image on the page is broken (the report marks <html data-broken-images>
# once the page has loaded).
#
#   scripts/check_report_render.sh [REPORT_HTML [SCREENSHOT_PNG]]
#
# Without REPORT_HTML a report is built first from synthetic records (reports/synthetic.py) into
# reports-out/render-check/.
# Needs Debian's `chromium` (apt-get install -y chromium). Exit 0: renders; 1: it does not;
# 2: bad arguments; 3: no browser.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
py="${PYTHON:-$root/.venv/bin/python}"
[ -x "$py" ] || py=python3
fail() { echo "check_report_render: $*" >&2; exit 1; }

browser="$(command -v chromium || command -v chromium-browser || command -v google-chrome || true)"
[ -n "$browser" ] || { echo "check_report_render: chromium not found (apt-get install -y chromium)" >&2; exit 3; }

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
html="${1:-}"
if [ -z "$html" ]; then
  out="$root/reports-out/render-check"
  html="$out/report.html"
  (cd "$root" && "$py" - "$out" <<'PY'
import sys
from pathlib import Path
from reports import build_report
from reports.synthetic import synthetic_records, write_jsonl
out = Path(sys.argv[1])
write_jsonl(out / "synthetic.jsonl", synthetic_records())
build_report([out / "synthetic.jsonl"], out, formats="html")
PY
  )
fi
[ -f "$html" ] || { echo "check_report_render: $html: no such file" >&2; exit 2; }
shot="${2:-$(dirname "$html")/screenshot.png}"
url="file://$(cd "$(dirname "$html")" && pwd)/$(basename "$html")"
flags=(--headless --no-sandbox --disable-gpu --disable-dev-shm-usage --hide-scrollbars
       --no-first-run --user-data-dir="$work/profile")

rm -f "$shot"
timeout 120 "$browser" "${flags[@]}" --window-size=1280,3000 --screenshot="$shot" "$url" >/dev/null 2>&1 || true
[ -s "$shot" ] || fail "no screenshot written for $html"
"$py" - "$shot" <<'PY' || fail "screenshot is not a usable PNG"
import sys
from PIL import Image
with Image.open(sys.argv[1]) as im:
    im.load()
    lo, hi = im.convert("L").getextrema()
assert im.format == "PNG" and hi - lo > 50, (im.format, lo, hi)  # a blank page is one grey level
PY

dom="$(timeout 120 "$browser" "${flags[@]}" --virtual-time-budget=5000 --dump-dom "$url" 2>/dev/null || true)"
images="$(grep -o 'data-images="[0-9]*"' <<<"$dom" | head -1 | tr -dc 0-9 || true)"
broken="$(grep -o 'data-broken-images="[0-9]*"' <<<"$dom" | head -1 | tr -dc 0-9 || true)"
[ -n "$broken" ] || fail "the page's image check did not run (not a zoo report, or scripts disabled)"
[ "$broken" = 0 ] || fail "$broken of $images images are broken in $html"
[ "${images:-0}" -gt 0 ] || fail "no image in $html"
echo "ok: $html renders: $images images, none broken; screenshot $shot ($(stat -c %s "$shot") bytes)"
