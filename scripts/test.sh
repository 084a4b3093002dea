#!/usr/bin/env bash
# Runs Postern's whole test suite on a fresh machine. It installs what the
# tests need (swaks, curl, strace, Dovecot, clamav-daemon and rspamd from
# Debian, Python clients from PyPI, nodemailer from npm) and
# starts every server the tests use on loopback.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null; then SUDO="sudo"; fi

# Debian packages the tests use, as command:package: Dovecot is the LMTP
# mail store of test_lmtp.py; clamd (clamav-daemon) scans for the virus
# tests, which start it on a signature database they write. Daemons live
# in /usr/sbin, which a user's PATH may lack.
missing=()
for need in swaks:swaks curl:curl strace:strace dovecot:dovecot-lmtpd clamd:clamav-daemon; do
  tool=${need%%:*}
  command -v "$tool" >/dev/null || [ -x "/usr/sbin/$tool" ] || missing+=("${need#*:}")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi
# rspamd for the spam-scoring tests, which start it themselves with a
# configuration of their own (its recommends bring Redis, not needed).
if ! command -v rspamd >/dev/null; then
  echo "installing: rspamd"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends rspamd >/dev/null
fi
python3 -m pip install -q --disable-pip-version-check -r tests/e2e/requirements.txt
command -v npm >/dev/null || { $SUDO apt-get update -qq; DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq nodejs npm >/dev/null; }
(cd tests/e2e/node && npm ci --no-audit --no-fund --loglevel=error)

# docs/claims.md cites only tests that exist (no build or server needed,
# so first).
python3 -m pytest -q tests/docs
cargo build --workspace --locked
cargo test --workspace --locked
python3 -m pytest -q tests/e2e
# The benchmark's bookkeeping (medians of clean runs, PASS/MISS), on
# synthetic runs: the benchmark itself needs the whole machine.
python3 -m pytest -q bench
