# liqo-gateway: see README.md. Every target works on a fresh Debian 12 machine as root.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
APT_PACKAGES := wireguard-go wireguard-tools iptables iproute2 iputils-ping conntrack \
	util-linux procps netcat-openbsd kmod
# The container engine and the image's base: `make image` (run by `make test` and `make demo`).
CONTAINER_PACKAGES := podman buildah runc catatonit mmdebstrap
# The kernel guest (tests/kernel: QEMU boots Debian's kernel, which has the WireGuard module) and the
# benchmarks' traffic generator.
KERNEL_GUEST_PACKAGES := qemu-system-x86 busybox-static
BENCH_PACKAGES := iperf3
PROTO_OUT := services/api

.PHONY: install apt venv proto lint image image-clean kernel-guest test test-unit bench demo clean-host

install: apt venv

# Installs only what is missing, so a second run touches nothing.
apt:
	@missing=""; for p in $(APT_PACKAGES) $(CONTAINER_PACKAGES) $(KERNEL_GUEST_PACKAGES) $(BENCH_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	command -v kubectl >/dev/null 2>&1 || missing="$$missing kubernetes-client"; \
	if [ -n "$$missing" ]; then \
	  echo "apt-get install$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi

venv: $(VENV)/.installed

# The product with its dev tools, and the sandbox (its own distribution: the product never ships it).
$(VENV)/.installed: pyproject.toml sandbox/pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]' -e ./sandbox
	touch $@

proto: venv
	./scripts/gen-proto.sh $(PY) $(PROTO_OUT)

lint: venv
	$(VENV)/bin/ruff check services sandbox tests bench
	$(VENV)/bin/mypy services sandbox
	$(VENV)/bin/lint-imports --no-cache
	cd protos && ../$(VENV)/bin/buf lint && ../$(VENV)/bin/buf format --diff --exit-code

# localhost/liqo-gateway:dev (Containerfile) in the project's own podman store, build/podman/.
# A second run with no change reuses every cached layer.
image: install
	./scripts/build-image.sh $(PY)

# Removes the project's podman store (images, build cache, the mmdebstrap base) and the build context.
# Nothing of it is mounted between two podman calls (each runs in a private mount namespace).
image-clean:
	rm -rf build/podman build/image build/base

# build/kernel-guest: Debian's kernel and an initramfs that boots it on this machine's root (tests/kernel).
kernel-guest: build/kernel-guest/initramfs.cpio.gz
build/kernel-guest/initramfs.cpio.gz: scripts/kernel-guest/build-boot.sh scripts/kernel-guest/init | install
	./scripts/kernel-guest/build-boot.sh build/kernel-guest

# The image and the kernel guest first: the root tests in tests/containers and tests/kernel run them.
test: install image kernel-guest
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH $(PY) -m pytest -q -p no:cacheprovider tests

test-unit: venv
	$(PY) -m pytest -q -p no:cacheprovider tests/unit

# Benchmarks print numbers (the last line of each is one JSON object); they assert nothing.
bench: install
	$(PY) bench/natmap_apply.py --sizes 100,1000,10000
	$(PY) bench/reconcile_latency.py
	$(PY) bench/kubeapi_rps.py
	$(PY) bench/kernel_path.py
	$(PY) bench/host_rules.py
	$(PY) bench/tunnel_burst.py
	$(PY) bench/failover.py
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH $(PY) bench/throughput.py --gateways --plain-default-mtu
	$(PY) bench/footprint.py

# The local sandbox (README "The sandbox"); extra flags: make demo DEMO_ARGS="--keep" (or --no-failover, --quiet).
DEMO_ARGS ?=
demo: install $(if $(findstring --pods,$(DEMO_ARGS)),image)
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH $(PY) -m sandbox.demo $(DEMO_ARGS)

# Removes every Liqo object this machine's netagent created (uninstall); touches nothing else.
clean-host: venv
	$(VENV)/bin/liqo-netagent cleanup
