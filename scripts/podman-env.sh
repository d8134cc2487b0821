# Sourced by scripts/build-image.sh (and usable by hand: `. scripts/podman-env.sh; pm images`).
#
# The project's own podman: its configuration and its store live under build/podman/, so that nothing is
# shared with (or left in) the machine's default store, /run/containers, /run/libpod or /dev/shm. Its
# run root and tmp dir are in the per-call tmpfs on /run (see pm below): podman wants a run root under
# 50 characters, which a checkout's path may not allow. sandbox/testkit/podman.py writes the same two
# files (keep them in step).
ROOT=${ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}
export PODMAN_DIR=${PODMAN_DIR:-$ROOT/build/podman}
export CONTAINERS_CONF=$PODMAN_DIR/containers.conf
export CONTAINERS_STORAGE_CONF=$PODMAN_DIR/storage.conf
export TMPDIR=$PODMAN_DIR/tmp/copy
PODMAN_RUN=/run/liqo-podman # inside pm's private /run only

podman_write_config() {
	mkdir -p "$PODMAN_DIR/storage" "$PODMAN_DIR/tmp/copy" "$PODMAN_DIR/networks"
	# ulimits: the session has no CAP_SYS_RESOURCE, so the runtime may not raise them; runc: crun
	# refuses this hybrid cgroup v1/v2 host; file events and file locks: nothing in journald or
	# /dev/shm; the network config dir: podman never writes to /etc/cni.
	cat >"$CONTAINERS_CONF.new" <<EOF
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]

[network]
network_config_dir = "$PODMAN_DIR/networks"

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
lock_type = "file"
tmp_dir = "$PODMAN_RUN/tmp"
image_copy_tmp_dir = "$PODMAN_DIR/tmp/copy"
EOF
	cat >"$CONTAINERS_STORAGE_CONF.new" <<EOF
[storage]
driver = "overlay"
graphroot = "$PODMAN_DIR/storage"
runroot = "$PODMAN_RUN/run"
EOF
	# Rewritten only when different: an unchanged file keeps podman's view of the store unchanged.
	for f in "$CONTAINERS_CONF" "$CONTAINERS_STORAGE_CONF"; do
		if cmp -s "$f.new" "$f"; then rm -f "$f.new"; else mv "$f.new" "$f"; fi
	done
}

# podman on the project's store, in a private mount namespace: as root, podman 4.3 writes its blob cache
# to /var/lib/containers/cache and runc its state to /run/runc whatever the configuration says; here
# those writes land in an overlay of ours (one per call: concurrent calls may not share an upper dir)
# and a tmpfs, both gone with the call (and with them the run root and tmp dir). For image operations
# only: a container started this way dies with the command.
pm() {
	D=$PODMAN_DIR R=$PODMAN_RUN unshare --mount --propagation private -- sh -c '
		mkdir -p "$D/varlib" && V=$(mktemp -d "$D/varlib/XXXXXX") && mkdir "$V/upper" "$V/work" &&
		mount -n -t tmpfs -o mode=0755 tmpfs /run && mkdir -p "$R/run" "$R/tmp" &&
		mount -n -t overlay overlay -o "lowerdir=/var/lib,upperdir=$V/upper,workdir=$V/work" /var/lib ||
		exit 125
		podman --root "$D/storage" --runroot "$R/run" --tmpdir "$R/tmp" "$@"
		rc=$?
		umount -n /var/lib && rm -rf "$V"
		exit $rc' sh "$@"
}
