#!/usr/bin/env bash
# Runs every chunkd test on a fresh machine: installs what is missing, then runs the suite.
set -euo pipefail
cd "$(dirname "$0")/.."

# System packages the tests use: openssl (the at-rest test decrypts with its command line),
# chromium (the browser tests drive it headless), node and npm (they run the browser tests).
missing=()
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
[ -x /usr/bin/chromium ] || missing+=(chromium)
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}"
fi

if [ "$(node -p 'process.versions.node.split(".")[0]')" -lt 20 ]; then
  echo "The browser tests need Node.js 20 or newer (playwright-core); this is node $(node --version)." >&2
  exit 1
fi

# The demo page's client libraries and the browser-test driver, exactly as locked. playwright-core
# never downloads a browser: the tests launch /usr/bin/chromium.
npm ci --prefix static --no-audit --no-fund
npm ci --prefix tests/browser --no-audit --no-fund

cargo test --locked --all-targets

# The browser tests, one file after another (each starts its own chunkd and Chromium).
# CHUNKD_SCREENSHOT=1 makes them rewrite docs/demo.png.
failed=0
for t in tests/browser/*.test.js; do
  echo "browser tests: $t"
  node --test "$t" || failed=1
done
exit $failed
