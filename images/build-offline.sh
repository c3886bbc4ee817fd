#!/usr/bin/env bash
# Build the sandbox runtime images with no container registry: debootstrap a minimal Debian root filesystem
# holding python3, nodejs and bash, keep it as a tree (the nsjail backend can chroot into it) and import it
# into Docker as sandbox-runtime-{python,node,bash}:bookworm.
#
# Needs root, debootstrap, tar, flock, sha256sum, and the docker CLI unless --no-docker.
# Packages come from the Debian mirror this machine's apt is configured with (or --mirror).
# See images/README.md.
set -euo pipefail

# Bump when a change to this script changes the tree it builds: it invalidates every cached rootfs.
SCRIPT_VERSION=3
SUITE=bookworm
VARIANT=minbase
# Beyond minbase (which already has bash, coreutils, dpkg, apt). python3, not python3-minimal: the full
# standard library (json, sqlite3, ssl, ...). The data stack (numpy, pandas, matplotlib) so that it imports
# offline, and the IPython kernel with jupyter_client for sessions (their agent and kernel run in the image).
# pip, curl and the CA certificates for sandboxes a policy gives network (docs/egress.md): packages from a
# mirror or a wheelhouse, TLS verified end to end through the proxy's CONNECT. No compilers.
# debootstrap resolves no virtual package, so the real packages behind the ones these depend on are named too
# (python3-zmq needs python3-cffi-backend-api-*, gdb, which ipykernel's debugger pulls in, libboost-regex).
PACKAGES=(python3 nodejs python3-numpy python3-pandas python3-matplotlib python3-ipykernel python3-jupyter-client
    python3-cffi-backend libboost-regex1.74.0 python3-pip ca-certificates curl)
RUNTIMES=(python node bash)
declare -A RUNTIME_CMD=([python]=/usr/bin/python3 [node]=/usr/bin/node [bash]=/bin/bash)
DEFAULT_MIRROR=http://deb.debian.org/debian
IMAGE_TAG=$SUITE

ROOTFS_DIR=/var/lib/sandbox-server/rootfs/$SUITE
CACHE_DIR=/var/cache/sandbox-server
MIRROR=
USE_DOCKER=1
REBUILD=0

usage() {
    cat <<EOF
Usage: $0 [options]

Builds the root filesystem (cached) and the images sandbox-runtime-{python,node,bash}:$IMAGE_TAG.

  --rootfs-dir DIR    where the rootfs tree is kept (default $ROOTFS_DIR);
                      the nsjail backend can use it as its chroot
  --cache-dir DIR     where the rootfs tarball is cached (default $CACHE_DIR)
  --docker-host URL   Docker daemon to import into (default: \$DOCKER_HOST, else the CLI's default)
  --no-docker         only build the rootfs tree (and its cached tarball)
  --mirror URL        Debian mirror (default: the one in this machine's apt sources, else $DEFAULT_MIRROR)
  --rebuild           ignore the cache: debootstrap afresh (e.g. to pick up a point release)
  -h, --help          this text
EOF
}

die() { echo "build-offline: error: $*" >&2; exit 1; }
log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*"; }

while (($#)); do
    case $1 in
        --rootfs-dir) ROOTFS_DIR=${2:?--rootfs-dir needs a value}; shift 2 ;;
        --rootfs-dir=*) ROOTFS_DIR=${1#*=}; shift ;;
        --cache-dir) CACHE_DIR=${2:?--cache-dir needs a value}; shift 2 ;;
        --cache-dir=*) CACHE_DIR=${1#*=}; shift ;;
        --docker-host) export DOCKER_HOST=${2:?--docker-host needs a value}; shift 2 ;;
        --docker-host=*) export DOCKER_HOST=${1#*=}; shift ;;
        --mirror) MIRROR=${2:?--mirror needs a value}; shift 2 ;;
        --mirror=*) MIRROR=${1#*=}; shift ;;
        --no-docker) USE_DOCKER=0; shift ;;
        --rebuild) REBUILD=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument: $1" ;;
    esac
done

[[ $(id -u) -eq 0 ]] || die "must run as root (debootstrap, and a rootfs owned by root)"
ROOTFS_DIR=$(realpath -m -- "$ROOTFS_DIR")
CACHE_DIR=$(realpath -m -- "$CACHE_DIR")
[[ $ROOTFS_DIR != / ]] || die "--rootfs-dir must not be /"
for tool in tar flock sha256sum; do
    command -v "$tool" >/dev/null || die "$tool not found"
done
if ((USE_DOCKER)); then
    command -v docker >/dev/null || die "docker CLI not found (use --no-docker to build only the rootfs)"
    docker version --format '{{.Server.Version}}' >/dev/null 2>&1 \
        || die "cannot reach the Docker daemon${DOCKER_HOST:+ at $DOCKER_HOST}: start it (systemctl enable --now docker; without systemd: dockerd --bridge=none --iptables=false &), or use --no-docker to build only the rootfs"
fi

ARCH=$(dpkg --print-architecture 2>/dev/null || uname -m)
# The cache key: everything that decides what the tree holds (not the mirror: same suite, same packages).
KEY=$(printf 'script=%s\nsuite=%s\nvariant=%s\narch=%s\npackages=%s\n' \
    "$SCRIPT_VERSION" "$SUITE" "$VARIANT" "$ARCH" "${PACKAGES[*]}" | sha256sum | cut -c1-16)
CACHE_TAR=$CACHE_DIR/rootfs-$SUITE-$ARCH-$KEY.tar
STAMP=etc/sandbox-runtime-release   # inside the rootfs: says which key built it

# The Debian mirror from this machine's apt sources (deb822 *.sources first, then one-line *.list): the
# first "deb" entry for the suite itself. Prints nothing when none is configured.
apt_mirror() {
    local f
    for f in /etc/apt/sources.list.d/*.sources; do
        [[ -f $f ]] || continue
        awk -v suite="$SUITE" '
            function flush() {
                if (types ~ /(^| )deb( |$)/ && (" " suites " ") ~ (" " suite " ") && enabled != "no" && uris != "") {
                    split(uris, u, " "); print u[1]; found = 1; exit
                }
                types = ""; suites = ""; uris = ""; enabled = ""
            }
            /^[ \t]*#/ { next }
            /^[ \t]*$/ { flush(); next }
            {
                line = $0; sub(/^[ \t]+/, "", line)
                field = tolower(line); sub(/:.*/, "", field)
                value = line; sub(/^[^:]*:[ \t]*/, "", value); gsub(/[ \t]+/, " ", value)
                if (field == "types") types = value
                else if (field == "suites") suites = value
                else if (field == "uris") uris = value
                else if (field == "enabled") enabled = tolower(value)
            }
            END { if (!found) flush() }
        ' "$f" | head -n1
    done
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [[ -f $f ]] || continue
        # deb [options] URI suite components...
        sed -E 's/\[[^]]*\]//' "$f" | awk -v suite="$SUITE" '$1 == "deb" && $3 == suite { print $2; exit }'
    done
}

# Unmount whatever a failed debootstrap left mounted under a dir, then remove the dir (never crossing into
# another filesystem, so a leftover mount of /proc or /sys is never recursed into).
remove_tree() {
    local dir=$1 m
    [[ -e $dir ]] || return 0
    if command -v findmnt >/dev/null; then
        findmnt -rn -o TARGET | awk -v d="$dir" 'index($0, d "/") == 1' | sort -r | while read -r m; do
            umount -l "$m" 2>/dev/null || true
        done
    fi
    rm -rf --one-file-system -- "$dir"
}

TMP_PATHS=()
cleanup() {
    local p
    for p in "${TMP_PATHS[@]}"; do
        remove_tree "$p"
    done
}
trap cleanup EXIT
trap 'echo "build-offline: interrupted; removing temp files" >&2; exit 130' INT
trap 'echo "build-offline: terminated; removing temp files" >&2; exit 143' TERM

mkdir -p -- "$CACHE_DIR" "$(dirname -- "$ROOTFS_DIR")"
exec 9>"$CACHE_DIR/.build-offline.lock"
flock -n 9 || { log "waiting for another build-offline run to finish"; flock 9; }

START=$SECONDS
log "suite $SUITE/$ARCH, packages: ${PACKAGES[*]} (+ $VARIANT), cache key $KEY"

# Keep only "copyright" under /usr/share/doc, and no man/info pages, locales, apt lists or logs.
trim_rootfs() {
    local r=$1
    rm -rf -- "$r"/var/cache/apt/* "$r"/var/lib/apt/lists/* "$r"/var/cache/debconf/*-old \
        "$r"/var/cache/ldconfig/aux-cache "$r"/usr/share/man "$r"/usr/share/info "$r"/usr/share/lintian \
        "$r"/usr/share/linda "$r"/usr/share/bug "$r"/usr/share/locale/*
    find "$r"/usr/share/doc -mindepth 1 ! -type d ! -name copyright -delete
    find "$r"/usr/share/doc -mindepth 1 -type d -empty -delete
    find "$r"/var/log -type f -delete
    # No trace of the build host: mirror, name, resolver, machine id.
    printf 'deb %s %s main\n' "$DEFAULT_MIRROR" "$SUITE" > "$r"/etc/apt/sources.list
    echo sandbox > "$r"/etc/hostname
    printf '127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n' > "$r"/etc/hosts
    : > "$r"/etc/resolv.conf
    rm -f -- "$r"/etc/machine-id "$r"/var/lib/dbus/machine-id
    # No device nodes: Docker mounts its own /dev, and nsjail binds the few host devices it allows. Those
    # need mount points that already exist (the jail's root cannot create them in this root-owned tree), so
    # they are empty regular files: an unbound one reads as empty, never as a device.
    find "$r"/dev -mindepth 1 -delete
    local d
    for d in null zero full random urandom; do
        : > "$r/dev/$d"
        chmod 0644 "$r/dev/$d"
    done
    install -d -m 0755 "$r"/dev/pts
    install -d -m 1777 "$r"/dev/shm
    ln -s /proc/self/fd "$r"/dev/fd
    ln -s /proc/self/fd/0 "$r"/dev/stdin
    ln -s /proc/self/fd/1 "$r"/dev/stdout
    ln -s /proc/self/fd/2 "$r"/dev/stderr
}

# The sandbox user is uid/gid 65534: Debian's nobody/nogroup (base-passwd has them; make sure).
ensure_sandbox_user() {
    local r=$1
    grep -q '^[^:]*:[^:]*:65534:' "$r"/etc/group || echo 'nogroup:x:65534:' >> "$r"/etc/group
    grep -q '^[^:]*:[^:]*:65534:65534:' "$r"/etc/passwd \
        || echo 'nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin' >> "$r"/etc/passwd
    if [[ -f $r/etc/shadow ]] && ! grep -q '^nobody:' "$r"/etc/shadow; then
        echo 'nobody:*:19000:0:99999:7:::' >> "$r"/etc/shadow
    fi
    install -d -o 65534 -g 65534 -m 0755 "$r"/work
    install -d -m 1777 "$r"/tmp
    install -d -m 0755 "$r"/dev "$r"/proc "$r"/sys
}

check_rootfs() {
    local r=$1 p
    for p in "${RUNTIME_CMD[@]}"; do
        [[ -x $r$p || -L $r$p ]] || die "the rootfs has no $p"
    done
}

build_rootfs_into() {
    local target=$1 mirror=$MIRROR
    command -v debootstrap >/dev/null || die "debootstrap not found (apt-get install debootstrap)"
    if [[ -z $mirror ]]; then
        mirror=$(apt_mirror | head -n1 || true)
        mirror=${mirror:-$DEFAULT_MIRROR}
    fi
    local include
    include=$(IFS=,; echo "${PACKAGES[*]}")
    log "debootstrap --variant=$VARIANT --include=$include $SUITE (mirror: $mirror); this takes a few minutes"
    local dlog=$CACHE_DIR/debootstrap.log
    if ! debootstrap --variant="$VARIANT" --include="$include" --arch="$ARCH" "$SUITE" "$target" "$mirror" \
            >"$dlog" 2>&1; then
        tail -n 30 "$dlog" >&2
        [[ -f $target/debootstrap/debootstrap.log ]] && tail -n 30 "$target/debootstrap/debootstrap.log" >&2
        die "debootstrap failed (full log: $dlog)"
    fi
    log "debootstrap done ($((SECONDS - START))s); trimming"
    trim_rootfs "$target"
    ensure_sandbox_user "$target"
    check_rootfs "$target"
    {
        echo "KEY=$KEY"
        echo "SUITE=$SUITE"
        echo "ARCH=$ARCH"
        echo "PACKAGES=\"${PACKAGES[*]}\""
        echo "SCRIPT_VERSION=$SCRIPT_VERSION"
        echo "BUILT=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
    } > "$target/$STAMP"
}

# Replace the rootfs tree with a finished one from a temp dir beside it: a rename, never a half-written tree.
install_rootfs() {
    local new=$1 old=
    if [[ -e $ROOTFS_DIR ]]; then
        old=$(mktemp -d "$ROOTFS_DIR.old.XXXXXX")
        TMP_PATHS+=("$old")
        mv -T -- "$ROOTFS_DIR" "$old"
    fi
    mv -T -- "$new" "$ROOTFS_DIR"
    [[ -z $old ]] || remove_tree "$old"
}

# Deterministic tar of a tree (sorted, numeric owners): the same tree always gives the same bytes, so the
# three imports below share one layer.
tar_tree() { tar --sort=name --numeric-owner -C "$1" -c .; }

# Sets TMP_DIR to a new empty dir beside $1 (same filesystem, so it can be renamed into place).
new_tmp_beside() {
    TMP_DIR=$(mktemp -d "$1.tmp.XXXXXX")
    chmod 0755 "$TMP_DIR"
    TMP_PATHS+=("$TMP_DIR")
}

# 1. The cached tarball.
if ((REBUILD)) || [[ ! -f $CACHE_TAR ]]; then
    if ((REBUILD)); then log "--rebuild: ignoring the cache"; fi
    new_tmp_beside "$ROOTFS_DIR"
    tmp_root=$TMP_DIR
    build_rootfs_into "$tmp_root"
    log "caching the rootfs as $CACHE_TAR"
    tmp_tar=$(mktemp "$CACHE_TAR.tmp.XXXXXX")
    TMP_PATHS+=("$tmp_tar")
    tar_tree "$tmp_root" > "$tmp_tar"
    mv -f -- "$tmp_tar" "$CACHE_TAR"
    for stale in "$CACHE_DIR"/rootfs-"$SUITE"-"$ARCH"-*.tar; do
        [[ $stale == "$CACHE_TAR" || ! -f $stale ]] || { log "removing stale cache $stale"; rm -f -- "$stale"; }
    done
    install_rootfs "$tmp_root"
    log "rootfs built at $ROOTFS_DIR"
else
    log "cache hit: $CACHE_TAR"
fi

# 2. The rootfs tree: kept when it was built from the same key, else re-extracted from the cache.
if [[ -f $ROOTFS_DIR/$STAMP ]] && grep -qx "KEY=$KEY" "$ROOTFS_DIR/$STAMP"; then
    log "rootfs up to date: $ROOTFS_DIR"
else
    log "extracting the cached rootfs into $ROOTFS_DIR"
    new_tmp_beside "$ROOTFS_DIR"
    tmp_root=$TMP_DIR
    tar --numeric-owner -xpf "$CACHE_TAR" -C "$tmp_root"
    check_rootfs "$tmp_root"
    install_rootfs "$tmp_root"
fi
log "rootfs size: $(du -sh --one-file-system "$ROOTFS_DIR" | cut -f1)"

# 3. The images: one import per runtime name, each with its own label and CMD, all sharing one layer.
if ((USE_DOCKER)); then
    superseded=()
    for rt in "${RUNTIMES[@]}"; do
        image=sandbox-runtime-$rt:$IMAGE_TAG
        have=$(docker image inspect -f '{{.Id}} {{index .Config.Labels "org.sandbox-server.rootfs-key"}}' \
            "$image" 2>/dev/null || true)
        if [[ ${have#* } == "$KEY" ]]; then
            log "image up to date: $image"
            continue
        fi
        [[ -z $have ]] || superseded+=("${have%% *}")
        log "importing $image"
        id=$(tar_tree "$ROOTFS_DIR" | docker import \
            --change "LABEL org.sandbox-server.runtime=$rt" \
            --change "LABEL org.sandbox-server.rootfs-key=$KEY" \
            --change "LABEL org.sandbox-server.suite=$SUITE" \
            --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
            --change 'ENV LANG=C.UTF-8' \
            --change 'WORKDIR /work' \
            --change 'USER 65534:65534' \
            --change "CMD [\"${RUNTIME_CMD[$rt]}\"]" \
            --message "sandbox-server build-offline.sh v$SCRIPT_VERSION ($SUITE, key $KEY)" \
            - "$image")
        log "  $image = ${id#sha256:}"
    done
    # Drop the images these replaced (left untagged); one still used by a container stays.
    for id in "${superseded[@]}"; do
        if docker image rm "$id" >/dev/null 2>&1; then
            log "removed superseded image ${id#sha256:}"
        fi
    done
    docker image ls --filter "reference=sandbox-runtime-*:$IMAGE_TAG" \
        --format '{{.Repository}}:{{.Tag}}  {{.ID}}  {{.Size}}'
fi

log "done in $((SECONDS - START))s"
