#!/usr/bin/env bash
# Runs every chunkd test on a fresh machine: installs what is missing, then runs the suite.
set -euo pipefail
cd "$(dirname "$0")/.."

# System packages the tests use: openssl (the at-rest test decrypts with its command line).
missing=()
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}"
fi

cargo test --locked --all-targets
