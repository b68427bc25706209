#!/usr/bin/env bash
# Builds the workload image cube-demo/echo:latest locally: no registry needed.
# A static Rust binary (crt-static) in a FROM scratch image. Idempotent, and
# safe to run from several processes at once (flock).
set -euo pipefail

IMAGE="cube-demo/echo:latest"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

command -v docker >/dev/null 2>&1 || { echo "build.sh: the docker CLI is not installed" >&2; exit 1; }
docker version --format '{{.Server.Version}}' >/dev/null 2>&1 || {
    echo "build.sh: the Docker engine is not reachable (is dockerd running? DOCKER_HOST=${DOCKER_HOST:-unset})" >&2
    exit 1
}

exec 9>"${TMPDIR:-/tmp}/cube-image-build.lock"
flock 9

target="$(rustc -vV | sed -n 's/^host: //p')"
RUSTFLAGS="-C target-feature=+crt-static" cargo build --quiet --release \
    --manifest-path "$root/images/echo/Cargo.toml" \
    --target "$target" --target-dir "$root/target/images"

ctx="$(mktemp -d)"
trap 'rm -rf "$ctx"' EXIT
cp "$root/target/images/$target/release/cube-echo" "$ctx/echo"
cp "$root/images/echo/Dockerfile" "$ctx/Dockerfile"
if ! out="$(DOCKER_BUILDKIT=0 docker build -q -t "$IMAGE" "$ctx" 2>&1)"; then
    echo "$out" >&2
    exit 1
fi
echo "built image $IMAGE"
