#!/usr/bin/env bash
# Install the Debian packages the connected tests need (Dovecot IMAP/POP3, and Chromium for the
# console's browser tests, driven by the `playwright` Python package — never `playwright install`).
#
# Idempotent: does nothing when the `dovecot` and `chromium` binaries are already present.
# The system dovecot service is never left running: the test fixtures start
# their own private instances on random loopback ports.
set -euo pipefail

PACKAGES=(dovecot-core dovecot-imapd dovecot-pop3d chromium)

have_dovecot() {
    command -v dovecot >/dev/null 2>&1 || [ -x /usr/sbin/dovecot ]
}

have_chromium() {
    [ -x /usr/bin/chromium ]
}

if have_dovecot && have_chromium; then
    echo "install-debian-deps: dovecot and chromium already installed, nothing to do"
    exit 0
fi

if [ "$(id -u)" -eq 0 ]; then
    SUDO=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true >/dev/null 2>&1; then
    SUDO=(sudo -n)
else
    {
        echo "install-debian-deps: dovecot or chromium is missing and this user cannot install packages."
        echo "Run as root (or with sudo):"
        echo "    apt-get update && apt-get install -y ${PACKAGES[*]} && (service dovecot stop || true)"
    } >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
# Keep the package from starting the system service during install
# (policy-rc.d exit code 101 = "action forbidden").
POLICY=/usr/sbin/policy-rc.d
CREATED_POLICY=0
if [ ! -e "$POLICY" ]; then
    printf '#!/bin/sh\nexit 101\n' | "${SUDO[@]}" tee "$POLICY" >/dev/null
    "${SUDO[@]}" chmod 755 "$POLICY"
    CREATED_POLICY=1
fi
cleanup() {
    if [ "$CREATED_POLICY" -eq 1 ]; then
        "${SUDO[@]}" rm -f "$POLICY"
    fi
}
trap cleanup EXIT

"${SUDO[@]}" apt-get update -qq
"${SUDO[@]}" apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}"

# In case the service got started anyway (e.g. a pre-existing policy allowed it).
"${SUDO[@]}" service dovecot stop >/dev/null 2>&1 || true

if ! have_dovecot; then
    echo "install-debian-deps: dovecot still missing after install" >&2
    exit 1
fi
if ! have_chromium; then
    echo "install-debian-deps: chromium still missing after install" >&2
    exit 1
fi
echo "install-debian-deps: installed ${PACKAGES[*]}"
