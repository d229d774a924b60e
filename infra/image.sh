#!/usr/bin/env bash
# The container image without a Docker daemon (none runs here):
#   infra/image.sh check   lints the Dockerfile with BuildKit's own checks, then runs its build
#                          stage on the host: the files its COPY lines take, alone in a scratch
#                          directory, built with the same cargo command; then checks the binary
#                          needs nothing the runtime stage (Debian slim + zlib) lacks.
# With a daemon, `docker build -t sharedcare .` builds the image itself.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

case "${1:-}" in
  check) ;;
  *) echo "usage: infra/image.sh check" >&2; exit 2 ;;
esac

eval "$(infra/tools.sh | sed 's/^dockerfile-lint=/lint=/;s/^helm=/helm=/')"
"$lint" Dockerfile

# The build stage: what it copies, and nothing else.
src="$(mktemp -d)"
trap 'rm -rf "$src"' EXIT
while read -r line; do
  read -ra w <<< "$line"
  dest="${w[-1]}"
  for f in "${w[@]:1:${#w[@]}-2}"; do
    if [[ "$dest" == */ ]]; then
      mkdir -p "$src/$dest" && cp -r "$f" "$src/$dest"
    else
      mkdir -p "$src/$(dirname "$dest")" && cp -r "$f" "$src/$dest"
    fi
  done
done < <(grep -E '^COPY [^-]' Dockerfile)
# The same command as the Dockerfile's RUN (its cache mounts become a shared target dir).
build=$(sed -n '/^RUN --mount=type=cache,target=\/usr\/local\/cargo\/registry/,/install -D/p' Dockerfile | grep -oE 'cargo build [^&\\]*' | sed 's/ *$//')
[ -n "$build" ] || { echo "image.sh: no cargo build in the Dockerfile's build stage" >&2; exit 1; }
echo "image.sh: build stage: $build (in a copy of only what the Dockerfile copies)" >&2
(cd "$src" && CARGO_TARGET_DIR="$root/target" $build)

# The runtime stage provides glibc, libgcc and zlib: the binary may need nothing more.
binary="$root/target/release/sharedcare"
extra=$(ldd "$binary" | awk '{print $1}' | grep -vE '^(linux-vdso\.so|/lib64/ld-linux-x86-64\.so|libc\.so|libm\.so|libgcc_s\.so|libz\.so|libpthread\.so|libdl\.so)' || true)
if [ -n "$extra" ]; then
  echo "image.sh: the binary needs libraries the runtime stage does not install: $extra" >&2
  exit 1
fi
"$binary" --help >/dev/null
echo "image.sh: Dockerfile lints clean; its build stage compiles; the binary runs on the runtime stage's libraries"
