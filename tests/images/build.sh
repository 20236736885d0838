#!/usr/bin/env bash
# Build the Mace container images without a Docker engine or a registry: buildah (chroot isolation)
# from the real Dockerfile.agent / Dockerfile.operator, on a Debian base image made locally with
# debootstrap and tagged as the Dockerfiles' base (debian:bookworm-slim).
#
# Usage:  tests/images/build.sh [--archive DIR] [agent|operator|lab|pause|base]...   (default: agent operator)
#   --archive DIR   also write DIR/mace-<image>.tar for each image (OCI archives for ctr/kind)
#   lab, pause      the test node's workload image (tests/node/image/Dockerfile.lab) and its sandbox image
#                   (tests/node/image/pause.c, compiled here statically into a scratch image)
# Prints on stdout one line per image built: NAME=REFERENCE (e.g. AGENT_IMAGE=localhost/mace-agent:dev).
# Progress and timings go to stderr. Needs root, buildah and debootstrap.
#
# Caching (outside the repository, so a warm machine rebuilds only what changed):
#   the debootstrap root file system   $MACE_TOOLS_CACHE/base-<suite>-<key> (default key: ISO year-week and
#                                      recipe revision: the base and its security updates refresh weekly)
#   image layers                       buildah's own storage (/var/lib/containers/storage), --layers
# Environment: MACE_TOOLS_CACHE (default /var/cache/mace-tools), MACE_BASE_SUITE (default bookworm),
#   MACE_BASE_KEY (default $(date +%G-w%V)-<recipe>), MACE_DEBIAN_MIRROR (default
#   http://deb.debian.org/debian), MACE_DEBIAN_SECURITY_MIRROR, MACE_IMAGE_TAG (default dev).
set -euo pipefail
cd "$(dirname "$0")/../.."

CACHE=${MACE_TOOLS_CACHE:-/var/cache/mace-tools}
SUITE=${MACE_BASE_SUITE:-bookworm}
RECIPE=r4   # bump when the base image recipe below changes
KEY=${MACE_BASE_KEY:-$(date +%G-w%V)-$RECIPE}
MIRROR=${MACE_DEBIAN_MIRROR:-http://deb.debian.org/debian}
SECURITY_MIRROR=${MACE_DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
TAG=${MACE_IMAGE_TAG:-dev}
BASE_IMAGE=debian:$SUITE-slim
BASE_DIR=$CACHE/base-$SUITE-$KEY
KEY_LABEL=dev.mace.base-key

log() { printf '[images %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

timed() {
  local name=$1 t0=$SECONDS
  shift
  "$@"
  log "$name took $((SECONDS - t0))s"
}

# ------------------------------------------------------------------ base image
# Apt sources with the suite's updates and security fixes (debootstrap only sets up the suite itself),
# and the files a slim image leaves out (as the official -slim images do), for every later apt-get install.
configure_rootfs() {
  rm -f "$1/etc/apt/sources.list"
  cat >"$1/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: $MIRROR
Suites: $SUITE $SUITE-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: $SECURITY_MIRROR
Suites: $SUITE-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
  cat >"$1/etc/dpkg/dpkg.cfg.d/mace-slim" <<'EOF'
# Keep images small: no documentation, manual pages or translations.
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-exclude /usr/share/lintian/*
EOF
  cat >"$1/etc/apt/apt.conf.d/mace-slim" <<'EOF'
APT::Install-Recommends "false";
APT::Install-Suggests "false";
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb || true"; };
EOF
}

make_rootfs() {
  [ -f "$BASE_DIR/.complete" ] && { log "base root fs: cached in $BASE_DIR"; return; }
  command -v debootstrap >/dev/null || die "debootstrap not found (apt-get install debootstrap)"
  mkdir -p "$CACHE"
  local work
  work=$(mktemp -d "$CACHE/.base-$SUITE-XXXXXX")
  trap 'rm -rf "$work"' EXIT
  log "debootstrap --variant=minbase $SUITE from $MIRROR"
  debootstrap --variant=minbase "$SUITE" "$work/rootfs" "$MIRROR" >"$work/debootstrap.log" 2>&1 \
    || { tail -20 "$work/debootstrap.log" >&2; die "debootstrap failed"; }
  configure_rootfs "$work/rootfs"
  log "applying $SUITE-updates and $SUITE-security"
  chroot "$work/rootfs" sh -c 'apt-get update -qq && apt-get upgrade -y -qq && apt-get clean' \
    >>"$work/debootstrap.log" 2>&1 || { tail -20 "$work/debootstrap.log" >&2; die "apt-get upgrade in the base failed"; }
  # The same files the dpkg excludes above keep out of later installs (licences stay).
  find "$work/rootfs/usr/share/doc" -mindepth 1 ! -type d ! -name copyright -delete
  find "$work/rootfs/usr/share/doc" -mindepth 1 -type d -empty -delete
  rm -rf "$work/rootfs"/usr/share/{man,info,locale,lintian}/* "$work/rootfs"/var/cache/apt/*.bin \
    "$work/rootfs"/var/lib/apt/lists/* "$work/rootfs"/var/log/*.log "$work/rootfs"/var/cache/debconf/*-old
  touch "$work/.complete"
  rm -rf "$BASE_DIR"
  mv "$work/rootfs" "$BASE_DIR"
  mv "$work/.complete" "$BASE_DIR/.complete"
  rm -rf "$work"
  trap - EXIT
  # Bound the cache: only the current key's root file system is kept.
  find "$CACHE" -maxdepth 1 -name "base-$SUITE-*" ! -name "$(basename "$BASE_DIR")" -exec rm -rf {} +
}

base_key_of_image() {
  buildah inspect --type image --format "{{index .ImageAnnotations \"$KEY_LABEL\"}}{{index .OCIv1.Config.Labels \"$KEY_LABEL\"}}" \
    "$BASE_IMAGE" 2>/dev/null || true
}

commit_base() {
  if [ "$(base_key_of_image)" = "$KEY" ]; then
    log "base image $BASE_IMAGE: up to date (key $KEY)"
    return
  fi
  local ctr mnt
  ctr=$(buildah from --pull=never scratch)
  mnt=$(buildah mount "$ctr")
  cp -a "$BASE_DIR"/. "$mnt"/
  rm -f "$mnt/.complete"
  buildah umount "$ctr" >/dev/null
  buildah config --label "$KEY_LABEL=$KEY" --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --cmd bash "$ctr"
  buildah commit --rm --quiet "$ctr" "$BASE_IMAGE" >/dev/null
  log "base image $BASE_IMAGE committed (key $KEY)"
  # Layers cached on the previous base are now unreachable: drop them so the storage stays bounded.
  buildah rmi --prune >/dev/null 2>&1 || true
}

build_base() {
  command -v buildah >/dev/null || die "buildah not found (apt-get install buildah)"
  timed "base root fs" make_rootfs
  timed "base image" commit_base
}

# ------------------------------------------------------------------ project images
# TLS to the Python package index may be intercepted by a proxy whose CA only the host trusts: hand the
# host's CA bundle to the RUN steps (bind-mounted, never copied into an image).
pip_cert_args() {
  local bundle=/etc/ssl/certs/ca-certificates.crt
  [ -f "$bundle" ] && printf '%s\n' -v "$bundle:/run/mace-host-ca.crt:ro" --build-arg PIP_CERT=/run/mace-host-ca.crt
}

# bud_tag REF ARGS...: build with buildah and tag REF; remove the image REF named before (now unused).
bud_tag() {
  local ref=$1 previous
  shift
  previous=$(buildah images --quiet --no-trunc "$ref" 2>/dev/null || true)
  buildah bud --quiet --isolation chroot --pull=never --layers --format oci "$@" -t "$ref" . >/dev/null
  if [ -n "$previous" ] && [ "$previous" != "$(buildah images --quiet --no-trunc "$ref")" ]; then
    buildah rmi "$previous" >/dev/null 2>&1 || true
  fi
}

build_image() {
  local component=$1 ref=localhost/mace-$1:$TAG stage
  local -a args
  mapfile -t args < <(pip_cert_args)
  args+=(-f "Dockerfile.$component")
  bud_tag "$ref" "${args[@]}"
  # The last layer of each intermediate stage would be an untagged leaf: tagging it keeps the layer
  # cache whole for the next build, and replacing the tag frees the previous build's leaf.
  for stage in project venv; do
    bud_tag "localhost/mace-$component-cache:$stage" "${args[@]}" --target "$stage"
  done
  log "$ref: $(buildah images --format '{{.Size}}' "$ref" | head -1)"
  local upper=${component^^}
  echo "${upper}_IMAGE=$ref"
}

# The test node's images (tests/node): the workload image from its own small context, and the sandbox
# ("pause") image, rebuilt only when pause.c changes (its hash is the image's label).
NODE_IMAGE_DIR=tests/node/image

build_lab() {
  local ref=localhost/mace-lab:$TAG previous
  previous=$(buildah images --quiet --no-trunc "$ref" 2>/dev/null || true)
  buildah bud --quiet --isolation chroot --pull=never --layers --format oci -f "$NODE_IMAGE_DIR/Dockerfile.lab" \
    -t "$ref" "$NODE_IMAGE_DIR" >/dev/null
  if [ -n "$previous" ] && [ "$previous" != "$(buildah images --quiet --no-trunc "$ref")" ]; then
    buildah rmi "$previous" >/dev/null 2>&1 || true
  fi
  echo "LAB_IMAGE=$ref"
}

build_pause() {
  local ref=localhost/mace-pause:$TAG sum ctr mnt work
  sum=$(sha256sum "$NODE_IMAGE_DIR/pause.c" | cut -c1-16)
  if [ "$(buildah inspect --type image --format '{{index .OCIv1.Config.Labels "dev.mace.source"}}' "$ref" 2>/dev/null)" \
      != "$sum" ]; then
    command -v gcc >/dev/null || die "gcc not found (apt-get install gcc libc6-dev)"
    work=$(mktemp -d)
    gcc -static -Os -s -o "$work/pause" "$NODE_IMAGE_DIR/pause.c"
    buildah rmi "$ref" >/dev/null 2>&1 || true
    ctr=$(buildah from --pull=never scratch)
    mnt=$(buildah mount "$ctr")
    install -m 0755 "$work/pause" "$mnt/pause"
    buildah umount "$ctr" >/dev/null
    rm -rf "$work"
    buildah config --label "dev.mace.source=$sum" --entrypoint '["/pause"]' --user 65535:65535 "$ctr"
    buildah commit --rm --quiet --format oci "$ctr" "$ref" >/dev/null
  fi
  echo "PAUSE_IMAGE=$ref"
}

archive() {
  local component=$1 dir=$2 ref=localhost/mace-$1:$TAG
  mkdir -p "$dir"
  rm -f "$dir/mace-$component.tar"
  buildah push --quiet "$ref" "oci-archive:$dir/mace-$component.tar:$ref" >/dev/null
  log "wrote $dir/mace-$component.tar ($(du -m "$dir/mace-$component.tar" | cut -f1) MB)"
}

main() {
  local archive_dir=""
  local -a targets=()
  while [ $# -gt 0 ]; do
    case $1 in
      --archive) [ $# -ge 2 ] || die "--archive needs a directory"; archive_dir=$2; shift 2 ;;
      agent|operator|lab|pause|base) targets+=("$1"); shift ;;
      -h|--help) sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 0 ;;
      *) die "unknown argument '$1' (expected agent, operator, lab, pause, base or --archive DIR)" ;;
    esac
  done
  [ ${#targets[@]} -gt 0 ] || targets=(agent operator)
  [ "$(id -u)" -eq 0 ] || die "needs root (buildah with chroot isolation)"
  # One build at a time per cache (parallel CI jobs on one machine share buildah's storage).
  mkdir -p "$CACHE"
  exec 9>"$CACHE/.images.lock"
  flock 9
  build_base
  for target in "${targets[@]}"; do
    case $target in
      base) continue ;;
      lab) timed "image mace-lab" build_lab ;;
      pause) build_pause ;;
      *) timed "image mace-$target" build_image "$target" ;;
    esac
    [ -z "$archive_dir" ] || timed "archive mace-$target" archive "$target" "$archive_dir"
  done
}

main "$@"
