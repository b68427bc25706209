#!/usr/bin/env bash
# What the engine-backed benches need beyond Rust and Docker, installed or
# built when missing: wrk and haproxy (Debian's packages), and the nginx
# image (images/nginx.sh: debootstrap + docker import, cached). Needs root
# the first time.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

missing=()
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
command -v haproxy >/dev/null 2>&1 || missing+=(haproxy)
if ((${#missing[@]})); then
    echo "setup.sh: installing ${missing[*]} from Debian's packages"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
bash "$root/images/nginx.sh"
