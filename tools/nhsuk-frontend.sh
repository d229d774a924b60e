#!/usr/bin/env bash
# Refreshes the vendored NHS.UK frontend (https://github.com/nhsuk/nhsuk-frontend, MIT) that the
# portal serves at /assets/nhsuk-frontend-<version>/ and identity's pages at
# /oauth2/assets/nhsuk-frontend-<version>/ (services/kit/src/nhsuk.rs): the compiled CSS and JavaScript and the
# images the CSS points at, from the npm package at the pinned version.
#
#   tools/nhsuk-frontend.sh            # the pinned version (below)
#   tools/nhsuk-frontend.sh 10.7.0     # move the pin: then update NHSUK_FRONTEND_VERSION in
#                                      # services/kit/src/nhsuk.rs and rebuild
set -euo pipefail
version="${1:-10.6.1}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="$root/services/kit/assets/nhsuk-frontend"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent "nhsuk-frontend@$version" >/dev/null && tar xzf "nhsuk-frontend-$version.tgz")
dist="$work/package/dist/nhsuk"
rm -rf "$out"
mkdir -p "$out/images"
# The CSS refers to its icons as /assets/images/…; served under the versioned prefix instead, so
# a new version never meets an old cached image.
# The source maps are not vendored, so their references go.
sed -e "s#url(/assets/images/#url(/assets/nhsuk-frontend-$version/images/#g" -e 's#/\*\# sourceMappingURL=[^*]*\*/##' \
  "$dist/nhsuk-frontend-$version.min.css" >"$out/nhsuk-frontend.min.css"
sed -e 's#^//\# sourceMappingURL=.*##' "$dist/nhsuk-frontend-$version.min.js" >"$out/nhsuk-frontend.min.js"
for image in favicon.ico favicon.svg nhsuk-icon-180.png \
  nhsuk-icon-arrow-down.svg nhsuk-icon-arrow-up-down.svg nhsuk-icon-arrow-up.svg nhsuk-icon-cross.svg; do
  cp "$dist/assets/images/$image" "$out/images/"
done
# Every image the CSS names must be here.
for used in $(grep -o "nhsuk-frontend-$version/images/[^)]*" "$out/nhsuk-frontend.min.css" | sort -u); do
  [ -f "$out/images/${used##*/}" ] || { echo "nhsuk-frontend.sh: the CSS uses ${used##*/}, not copied" >&2; exit 1; }
done
echo "$version" >"$out/VERSION"
echo "nhsuk-frontend $version -> ${out#$root/}" >&2
