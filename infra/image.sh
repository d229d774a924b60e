#!/usr/bin/env bash
# The container image without a Docker daemon (none runs here):
#   infra/image.sh check   lints the Dockerfile with BuildKit's own checks, then runs its build
#                          stage on the host: the files its COPY lines take, alone in a scratch
#                          directory, built with the same cargo command; then checks the binary
#                          needs no library the runtime stage does not install.
# With a daemon, `docker build -t sharedcare .` builds the image itself.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

case "${1:-}" in
  check) ;;
  *) echo "usage: infra/image.sh check" >&2; exit 2 ;;
esac

lint="${SHAREDCARE_DOCKERFILE_LINT:-$(infra/tools.sh | sed -n 's/^dockerfile-lint=//p')}"
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

# Every shared library the binary loads must come from a package the runtime stage has: Debian
# slim's own libc6 and libgcc-s1, or one its `apt-get install` names (the host is the same
# Debian release, so dpkg names the package each library comes from).
binary="$root/target/release/sharedcare"
runtime_pkgs="libc6 libgcc-s1 $(sed -n '/ AS runtime$/,$p' Dockerfile | grep -oE '[a-z0-9.+-]+=\*' | sed 's/=\*$//' | tr '\n' ' ')"
missing=""
for lib in $(ldd "$binary" | awk '$3 ~ /^\// {print $3}'); do
  pkgs=$(dpkg -S "$(basename "$lib")" 2>/dev/null | cut -d: -f1 | sort -u)
  found=""
  for p in $pkgs; do
    case " $runtime_pkgs " in *" $p "*) found=1 ;; esac
  done
  [ -n "$found" ] || missing="$missing $(basename "$lib") (${pkgs:-no package})"
done
if [ -n "$missing" ]; then
  echo "image.sh: the binary needs libraries the runtime stage does not install:$missing" >&2
  exit 1
fi
"$binary" --help >/dev/null
echo "image.sh: Dockerfile lints clean; its build stage compiles; the binary runs on the runtime stage's libraries"
