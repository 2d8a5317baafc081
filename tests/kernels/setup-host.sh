#!/usr/bin/env bash
# Install what the kernel matrix needs on a Debian host, as root:
#   qemu-system-x86 busybox-static kmod cpio xz-utils zstd, and the two guest
#   kernels through their metapackages: linux-image-amd64 from the release
#   itself (6.1 on bookworm) and from its -backports suite (6.12).
#
# The backports suite comes from the same mirror the machine already uses: a
# deb822 source is derived from the existing Debian entry in
# /etc/apt/sources.list.d/ (its URIs: and Signed-By:), so no mirror host is
# written anywhere in the repository. Prints the installed kernel images.
set -euo pipefail

if [ "$(id -u)" -ne 0 ]; then
    echo "setup-host: must run as root (apt-get install)" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
if [ -z "$codename" ]; then
    echo "setup-host: no VERSION_CODENAME in /etc/os-release: not a Debian release?" >&2
    exit 1
fi
backports="${codename}-backports"
ours=/etc/apt/sources.list.d/dumper-${backports}.sources

have_backports() {
    grep -rqsw -- "$backports" /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null
}

if ! have_backports; then
    # The first deb822 stanza whose Suites: names the release itself.
    stanza=$(awk -v rel="$codename" '
        BEGIN { RS = ""; FS = "\n" }
        {
            uris = ""; signed = ""; suites = ""; types = ""
            for (i = 1; i <= NF; i++) {
                if ($i ~ /^URIs:/)      { uris = $i }
                if ($i ~ /^Signed-By:/) { signed = $i }
                if ($i ~ /^Suites:/)    { suites = " " substr($i, 8) " " }
                if ($i ~ /^Types:/)     { types = $i }
            }
            if (types ~ /deb( |$)/ && suites ~ (" " rel " ") && uris != "") {
                print uris; if (signed != "") print signed; exit
            }
        }' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
    if [ -z "$stanza" ] && [ -f /etc/apt/sources.list ]; then
        # One-line format: "deb [opts] URI codename components..."
        uri=$(awk -v rel="$codename" '$1 == "deb" { for (i = 2; i <= NF; i++) if ($i == rel) { print $(i - 1); exit } }' \
              /etc/apt/sources.list)
        [ -n "$uri" ] && stanza="URIs: $uri"
    fi
    if [ -z "$stanza" ]; then
        echo "setup-host: found no Debian source for '$codename' in /etc/apt/sources.list.d/ to derive $backports from" >&2
        exit 1
    fi
    printf 'Types: deb\n%s\nSuites: %s\nComponents: main\n' "$stanza" "$backports" >"$ours"
    echo "setup-host: added $ours (mirror and key of the existing $codename entry)"
fi

apt-get update -qq
apt-get install -y -qq --no-install-recommends qemu-system-x86 busybox-static kmod cpio xz-utils zstd >/dev/null

# The concrete image packages the two metapackages point at.
image_of() {  # image_of [apt-cache options...]
    apt-cache "$@" depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/ { print $2; exit }'
}
stable=$(image_of)
bpo=$(image_of -o "APT::Default-Release=$backports")
if [ -z "$stable" ] || [ -z "$bpo" ]; then
    echo "setup-host: cannot resolve linux-image-amd64 (got '$stable' and '$bpo')" >&2
    exit 1
fi
missing=()
for pkg in "$stable" "$bpo"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
    # pkg/suite takes the backports image from backports; apt pulls in only
    # the dependencies that image needs from there, nothing else.
    args=()
    for pkg in "${missing[@]}"; do
        [ "$pkg" = "$bpo" ] && args+=("$pkg/$backports") || args+=("$pkg")
    done
    # INITRD=No: the kernel's postinst hook skips update-initramfs (minutes
    # per kernel); the guests boot with tests/kernels/guest.py's own initramfs.
    INITRD=No apt-get install -y -qq --no-install-recommends "${args[@]}" >/dev/null
fi
for pkg in "$stable" "$bpo"; do
    echo "setup-host: /boot/vmlinuz-${pkg#linux-image-}"
done
