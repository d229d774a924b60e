#!/usr/bin/env bash
# The container image, built and run without a Docker daemon (none runs here):
#   infra/image.sh build   builds the top-level Dockerfile with podman on runc, on base images it
#                          makes locally, and prints the image reference it built (and loads it
#                          into infra/cluster.sh's node when that runs)
#   infra/image.sh bases   makes (once per version) and prints the two base images
#
# Base images come from Debian's archive, not a registry: `mmdebstrap` builds a bookworm root
# filesystem and `podman import` makes it an image. The runtime base is trimmed as Debian's
# -slim images are (no man pages, docs or locales). The build base is the same Debian release
# with a C toolchain and the host's Rust toolchain at the Dockerfile's RUST_VERSION. They are
# kept in podman's own storage (outside the checkout), named by Debian release and Rust version,
# and made again only when missing (`podman rmi` one to refresh it).
#
# podman runs containers with Debian's runc: its default crun refuses this machine's hybrid
# cgroups. The process lacks CAP_SYS_RESOURCE, so ulimits are given explicitly, no higher than
# the current hard limits.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
state="$root/infra/.state/image"  # logs of the last base image build

need=()
for pair in podman:podman mmdebstrap:mmdebstrap runc:runc; do
  command -v "${pair%%:*}" >/dev/null || need+=("${pair#*:}")
done
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >&2
fi

# nproc: runc was refused 65536 under a hard limit of 96367 here, and took 32768.
nofile=$(ulimit -Hn); nproc=$(ulimit -Hu)
[ "$nofile" = unlimited ] && nofile=1048576
{ [ "$nproc" = unlimited ] || [ "$nproc" -gt 32768 ]; } && nproc=32768
podman=(podman --runtime runc)
limits=(--ulimit "nofile=$nofile:$nofile" --ulimit "nproc=$nproc:$nproc")

arg() { sed -n "s/^ARG $1=//p" Dockerfile | head -n1; }
rust_version="$(arg RUST_VERSION)"
release="$(arg DEBIAN_RELEASE)"
runtime_base="localhost/sharedcare-base/debian:$release-slim"
build_base="localhost/sharedcare-base/rust:$rust_version-$release"
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"

exists() { "${podman[@]}" image exists "$1"; }

bases() {
  if ! exists "$runtime_base"; then
    echo "image.sh: making $runtime_base from Debian's archive" >&2
    # As in Debian's own images: apt keeps no package caches (a Dockerfile's apt-get install
    # would otherwise leave about 80 MB of them in its layer).
    local apt_clean='DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; }; APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; }; Dir::Cache::pkgcache ""; Dir::Cache::srcpkgcache "";'
    # What Debian's -slim images leave out (debuerreotype's slimify list).
    mmdebstrap --variant=minbase --format=tar --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
      --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
      --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/groff/*' \
      --dpkgopt='path-exclude=/usr/share/info/*' --dpkgopt='path-exclude=/usr/share/lintian/*' \
      --dpkgopt='path-exclude=/usr/share/linda/*' --dpkgopt='path-exclude=/usr/share/locale/*' \
      --dpkgopt='path-include=/usr/share/locale/locale.alias' \
      --customize-hook="printf '%s\n' '$apt_clean' > \"\$1/etc/apt/apt.conf.d/docker-clean\"" \
      --customize-hook='printf "Acquire::Languages \"none\";\nAcquire::GzipIndexes \"true\";\n" > "$1/etc/apt/apt.conf.d/docker-minimal"' \
      --customize-hook='rm -rf "$1"/var/cache/apt/*.bin "$1"/var/lib/apt/lists/*' \
      "$release" - "$mirror" 2>"$state.mmdebstrap.log" \
      | "${podman[@]}" import --change 'CMD ["bash"]' - "$runtime_base" >/dev/null
  fi
  if ! exists "$build_base"; then
    local toolchain
    toolchain="$(rustup +"$rust_version" which rustc 2>/dev/null || true)"
    [ -n "$toolchain" ] || rustup toolchain install "$rust_version" --profile minimal >&2
    toolchain="$(dirname "$(dirname "$(readlink -f "$(rustup +"$rust_version" which rustc)")")")"
    "$toolchain/bin/rustc" --version | grep -q "^rustc $rust_version " || {
      echo "image.sh: $toolchain is not Rust $rust_version" >&2; exit 1; }
    echo "image.sh: making $build_base from Debian's archive and $toolchain" >&2
    # The build fetches crates: it trusts what this machine trusts, e.g. a TLS-inspecting egress
    # proxy's CA (the runtime base does not: it only ever sees Debian's archive, over HTTP).
    local cas=()
    if compgen -G '/usr/local/share/ca-certificates/*.crt' >/dev/null; then
      cas=(--customize-hook="copy-in $(echo /usr/local/share/ca-certificates/*.crt) /usr/local/share/ca-certificates"
           --customize-hook='chroot "$1" update-ca-certificates >/dev/null')
    fi
    # What the official rust image's buildpack-deps base gives a build: a C toolchain, pkg-config,
    # OpenSSL's and zlib's headers (librdkafka), perl and git.
    mmdebstrap --variant=minbase --format=tar --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
      --include=ca-certificates,gcc,g++,libc6-dev,make,pkg-config,libssl-dev,zlib1g-dev,perl,git \
      --customize-hook='mkdir -p "$1/usr/local/rust" "$1/usr/local/cargo/bin"' \
      --customize-hook="copy-in $toolchain/bin $toolchain/lib $toolchain/libexec /usr/local/rust" \
      "${cas[@]}" \
      "$release" - "$mirror" 2>"$state.mmdebstrap.log" \
      | "${podman[@]}" import \
          --change 'ENV CARGO_HOME=/usr/local/cargo' \
          --change 'ENV PATH=/usr/local/cargo/bin:/usr/local/rust/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
          --change 'CMD ["bash"]' - "$build_base" >/dev/null
  fi
  echo "runtime=$runtime_base"
  echo "build=$build_base"
}

build() {
  bases >/dev/null
  local revision tag
  revision="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  [ -z "$(git status --porcelain 2>/dev/null)" ] || revision="$revision-dirty"
  version="$(sed -n '/^\[workspace.package\]/,/^\[/s/^version = "\(.*\)"/\1/p' Cargo.toml)"
  tag="localhost/sharedcare:$version-$revision"
  echo "image.sh: building $tag" >&2
  "${podman[@]}" build "${limits[@]}" --layers -f Dockerfile -t "$tag" \
    --build-arg "BUILD_IMAGE=$build_base" --build-arg "RUNTIME_IMAGE=$runtime_base" \
    --build-arg "VERSION=$version" --build-arg "REVISION=$revision" . >&2
  # When the single-node cluster runs, its containerd gets the image too (nothing is pulled).
  if "$root/infra/cluster.sh" status >/dev/null 2>&1; then
    "$root/infra/cluster.sh" load "$tag"
  fi
  # Intermediate images are the layer cache of the next build: keep a day's worth.
  "${podman[@]}" image prune -f --filter until=24h >/dev/null
  echo "$tag"
}

mkdir -p "$(dirname "$state")"
case "${1:-}" in
  bases) bases ;;
  build) build ;;
  *) echo "usage: infra/image.sh build|bases" >&2; exit 2 ;;
esac
