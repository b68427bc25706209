#!/usr/bin/env bash
# Builds cube-bench/nginx:latest, the benchmarks' real HTTP server, with no
# registry: debootstrap makes a Debian root file system holding Debian's
# nginx-light, and `docker import` turns it into an image (about a minute
# the first time). Cached: nothing is done when the image exists. Installs
# debootstrap from Debian's packages when it is missing (needs root).
#
# nginx answers `GET /` with 200 and its container's host name (no file
# I/O), and serves `/big`, 64 MiB, for the TCP transfer.
set -euo pipefail

IMAGE="cube-bench/nginx:latest"
SUITE="${DEBIAN_SUITE:-bookworm}"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"

docker version --format '{{.Server.Version}}' >/dev/null 2>&1 || {
    echo "nginx.sh: the Docker engine is not reachable" >&2
    exit 1
}

exec 9>"${TMPDIR:-/tmp}/cube-nginx-build.lock"
flock 9

if docker image inspect "$IMAGE" >/dev/null 2>&1; then
    echo "image $IMAGE present"
    exit 0
fi
if ! command -v debootstrap >/dev/null 2>&1; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
fi

root="$(mktemp -d /var/tmp/cube-nginx.XXXXXX)"
trap 'rm -rf "$root"' EXIT
debootstrap --variant=minbase --include=nginx-light "$SUITE" "$root" "$MIRROR" >"$root.log" 2>&1 || {
    tail -20 "$root.log" >&2
    exit 1
}
rm -f "$root.log"

cat >"$root/etc/nginx/nginx.conf" <<'CONF'
user www-data;
worker_processes 1;
pid /run/nginx.pid;
daemon off;
error_log stderr warn;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 1000000;
    keepalive_timeout 75s;
    sendfile on;
    server {
        listen 8080;
        location = / { return 200 "nginx $hostname\n"; }
        location = /big { root /srv; }
    }
}
CONF
mkdir -p "$root/srv"
dd if=/dev/zero of="$root/srv/big" bs=1M count=64 status=none
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*

tar -C "$root" -c . | docker import \
    -c 'CMD ["/usr/sbin/nginx"]' -c 'EXPOSE 8080' - "$IMAGE" >/dev/null
echo "built image $IMAGE"
