#!/usr/bin/env bash
# Builds localhost/liqo-gateway:dev from ./Containerfile into the project's own podman store
# (build/podman/), with no registry and no network inside the build:
#   1. the base: debian:bookworm-slim if it is already in the store or can be pulled within a few
#      seconds, else a minbase bookworm made once by mmdebstrap and imported as
#      localhost/debian:bookworm-slim-local (kept: never rebuilt while it exists);
#   2. the Debian packages the image installs, downloaded on the host (the dependency closure against
#      the base's own dpkg status) into a flat apt repository in the build context;
#   3. the project's wheels, built on the host by `pip wheel` (only when the sources changed);
#   4. `podman build --pull=never --network=none`, which reuses its layer cache when nothing changed.
# Usage: scripts/build-image.sh PYTHON   (PYTHON: the interpreter whose pip builds the wheels)
# Environment: IMAGE (default localhost/liqo-gateway:dev), LIQO_IMAGE_PULL=0 skips the pull attempt.
set -euo pipefail

PY=${1:?usage: build-image.sh PYTHON}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=scripts/podman-env.sh
. "$ROOT/scripts/podman-env.sh"
IMAGE=${IMAGE:-localhost/liqo-gateway:dev}
PULLED_BASE=docker.io/library/debian:bookworm-slim
LOCAL_BASE=localhost/debian:bookworm-slim-local
CTX=$ROOT/build/image
# What the image installs from Debian (the Containerfile names the same packages).
PACKAGES=(python3 wireguard-go wireguard-tools iptables iproute2 util-linux procps libstdc++6 ca-certificates)

# The machine's pip configuration may name local indexes that do not exist: pip warns per package.
quiet_pip() { "$PY" -m pip "$@" 2> >(grep -v '^WARNING: Location .* is ignored' >&2); }
step() { printf '==> %s\n' "$*"; }
took() { printf '    (%ss)\n' "$(($(date +%s) - $1))"; }

podman_write_config
mkdir -p "$CTX"
# A store made with another configuration (run root, tmp dir) is refused by podman: it is only a cache.
if ! err=$(pm images -q 2>&1 >/dev/null) && [[ $err == *"database configuration mismatch"* ]]; then
	echo "the store under $PODMAN_DIR was made with another configuration: starting it anew"
	rm -rf "$PODMAN_DIR/storage" && mkdir -p "$PODMAN_DIR/storage"
fi

# ---- 1. the base --------------------------------------------------------------------------------
t=$(date +%s)
if pm image exists "$PULLED_BASE"; then
	BASE=$PULLED_BASE
elif pm image exists "$LOCAL_BASE"; then
	BASE=$LOCAL_BASE
elif [ "${LIQO_IMAGE_PULL:-1}" != 0 ] && timeout 20 bash -c "$(declare -f pm); pm pull -q $PULLED_BASE" \
	>/dev/null 2>&1; then
	BASE=$PULLED_BASE
else
	step "base: $PULLED_BASE cannot be pulled; mmdebstrap --variant=minbase bookworm"
	rootfs=$ROOT/build/base/rootfs.tar
	mkdir -p "$(dirname "$rootfs")"
	# Slim like the official image: no manual pages, documentation (copyright kept), locales, info.
	# The exclusions stay in the image's dpkg configuration, so later installs are slim too.
	mmdebstrap --quiet --mode=root --variant=minbase \
		--dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/doc/*' \
		--dpkgopt='path-include=/usr/share/doc/*/copyright' --dpkgopt='path-exclude=/usr/share/locale/*' \
		--dpkgopt='path-exclude=/usr/share/info/*' \
		bookworm "$rootfs"
	# An imported root filesystem has no PATH in its configuration.
	pm import -q --change 'ENV=PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
		--change 'CMD=["bash"]' "$rootfs" "$LOCAL_BASE" >/dev/null
	rm -f "$rootfs"
	BASE=$LOCAL_BASE
	took "$t"
fi
echo "base: $BASE"

# ---- 2. Debian packages: a flat apt repository in the build context -------------------------------
base_id=$(pm image inspect --format '{{.Id}}' "$BASE")
want="$base_id ${PACKAGES[*]}"
if [ "$(cat "$CTX/debs/.for" 2>/dev/null)" != "$want" ]; then
	t=$(date +%s)
	step "packages: downloading ${PACKAGES[*]} (and what the base lacks of their dependencies)"
	rm -rf "$CTX/debs" && mkdir -p "$CTX/debs/partial"
	status=$CTX/debs/partial/status
	# Read from a created, never started, container: nothing runs, no cgroup is made.
	ctr=$(pm create --pull=never "$BASE")
	pm cp "$ctr:/var/lib/dpkg/status" - | tar -xO >"$status"
	pm rm -f "$ctr" >/dev/null
	apt_get() {
		apt-get -qq -o Dir::State::status="$status" -o Dir::Cache::archives="$CTX/debs/" \
			-o Debug::NoLocking=1 "$@"
	}
	if ! apt_get install --download-only --no-install-recommends -y "${PACKAGES[@]}" >/dev/null; then
		apt-get update -qq # a fresh machine may have no package lists yet
		apt_get install --download-only --no-install-recommends -y "${PACKAGES[@]}" >/dev/null
	fi
	rm -rf "$CTX/debs/partial" "$CTX/debs/lock"
	(
		cd "$CTX/debs"
		for deb in *.deb; do
			dpkg-deb --field "$deb"
			printf 'Filename: ./%s\nSize: %s\nSHA256: %s\n\n' "$deb" "$(stat -c %s "$deb")" \
				"$(sha256sum "$deb" | cut -d' ' -f1)"
		done >Packages
		echo 'deb [trusted=yes] file:/debs ./' >local.list
	)
	echo "$want" >"$CTX/debs/.for"
	echo "    $(find "$CTX/debs" -name '*.deb' | wc -l) packages, $(du -sh "$CTX/debs" | cut -f1)"
	took "$t"
fi
debs_digest=$(sha256sum "$CTX/debs/Packages" | cut -d' ' -f1)

# ---- 3. wheels ----------------------------------------------------------------------------------
# Rebuilt only when the product's sources changed: a rebuilt wheel has new timestamps inside, which
# would defeat the layer cache.
sources_digest=$(
	cd "$ROOT"
	{
		"$PY" -m pip --version
		find pyproject.toml services -type f \( -name '*.py' -o -name '*.pyi' -o -name '*.toml' \
			-o -name '*.typed' -o -name '*.json' -o -name '*.yaml' \) -not -path '*/__pycache__/*' |
			LC_ALL=C sort | xargs sha256sum
	} | sha256sum | cut -d' ' -f1
)
if [ "$(cat "$CTX/wheels/.for" 2>/dev/null)" != "$sources_digest" ]; then
	t=$(date +%s)
	step "wheels: pip wheel of the product (services only, not the sandbox) and its dependencies"
	rm -rf "$CTX/wheels" "$ROOT/build/lib" "$ROOT"/build/bdist.* # no stale modules in the wheel
	mkdir -p "$CTX/wheels/deps" "$CTX/wheels/project" "$CTX/wheels/pip"
	quiet_pip wheel -q --disable-pip-version-check -w "$CTX/wheels/deps" "$ROOT"
	mv "$CTX"/wheels/deps/liqo_gateway-*.whl "$CTX/wheels/project/"
	# The installer used inside the build, run from its wheel: it never enters the venv.
	quiet_pip download -q --disable-pip-version-check --no-deps -d "$CTX/wheels/pip" \
		"pip==$("$PY" -m pip --version | cut -d' ' -f2)"
	rm -rf "$ROOT/build/lib" "$ROOT"/build/bdist.*
	echo "$sources_digest" >"$CTX/wheels/.for"
	echo "    $(find "$CTX/wheels" -name '*.whl' | wc -l) wheels, $(du -sh "$CTX/wheels" | cut -f1)"
	took "$t"
fi

# ---- 4. the image -------------------------------------------------------------------------------
t=$(date +%s)
step "podman build $IMAGE"
revision=$(git -C "$ROOT" rev-parse HEAD 2>/dev/null || echo unknown)
created=$(git -C "$ROOT" log -1 --format=%cI 2>/dev/null || echo unknown)
version=$(sed -n 's/^version = "\(.*\)"/\1/p' "$ROOT/pyproject.toml" | head -1)
pm build --pull=never --network=none --layers -f "$ROOT/Containerfile" -t "$IMAGE" \
	--build-arg "BASE_IMAGE=$BASE" --build-arg "DEBS_DIGEST=$debs_digest" \
	--build-arg "VERSION=$version" --build-arg "REVISION=$revision" --build-arg "CREATED=$created" \
	"$CTX"
took "$t"
# Podman builds its pod infra image on first use; made here, a node's podman (sandbox/testkit/podman.py)
# finds it in this store instead of building it.
pause_pod=
if [ -z "$(pm images -q --filter reference=localhost/podman-pause)" ]; then
	pause_pod=$(pm pod create --name liqo-pause-image) && pm pod rm -f liqo-pause-image >/dev/null
fi
# The cgroups that pod left, and podman's cgroup parent on the machine when empty (one in use by anyone
# else stays).
for d in /sys/fs/cgroup/*/libpod_parent; do
	rmdir ${pause_pod:+"$d/$pause_pod"} "$d/conmon" "$d" 2>/dev/null || true
done
size=$(pm image inspect --format '{{.Size}}' "$IMAGE")
echo "image: $IMAGE $(pm image inspect --format '{{.Id}}' "$IMAGE" | cut -c1-12)" \
	"size $((size / 1000000)) MB"
