"""The desired dataplane of one remote cluster, validated, and the CIDR arithmetic Liqo defines on it.

Both sides use it: the tunnel controller builds one from a TunnelEndpoint, the netagent from an
EnsureTunnel request. Validation raises `SpecError` naming the field, before anything is touched.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import re
import unicodedata
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network

NONE_CIDR = "None"  # Liqo's "no remapping" sentinel
# Matched whole (`fullmatch`, `\Z`): `$` also matches before a trailing newline, so "abc\n" passed.
CLUSTER_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
HOSTNAME_RE = re.compile(
    r"(?=.{1,253}\Z)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?"
)
MAX_KEEPALIVE_SECONDS = 3600
MAX_NAME_LEN = 63


class SpecError(ValueError):
    """Invalid input; the message names the offending field."""


def parse_cidr(field: str, value: str, *, optional: bool = False) -> IPv4Network | None:
    """Parses an IPv4 CIDR in canonical form; '' or 'None' mean absent when `optional`."""
    if optional and value in ("", NONE_CIDR):
        return None
    try:
        net = ipaddress.ip_network(value, strict=True)
    except ValueError as e:
        raise SpecError(f"{field}: {value!r} is not a canonical CIDR ({e})") from None
    if not isinstance(net, IPv4Network):
        raise SpecError(f"{field}: {value!r} is not an IPv4 CIDR")
    if net.prefixlen == 0:
        raise SpecError(f"{field}: {value!r} would capture all traffic")
    return net


def parse_ipv4(field: str, value: str) -> IPv4Address:
    try:
        return IPv4Address(value)
    except ValueError:
        raise SpecError(f"{field}: {value!r} is not an IPv4 address") from None


def check_public_key(field: str, value: str) -> str:
    """WireGuard keys are 32 bytes, base64 with padding (as `wg` prints them)."""
    try:
        raw = base64.b64decode(value, validate=True)
    except (ValueError, TypeError):
        raise SpecError(f"{field}: not valid base64") from None
    if len(raw) != 32:
        raise SpecError(f"{field}: a WireGuard key is 32 bytes, got {len(raw)}")
    return value


def check_cluster_id(value: str) -> str:
    if not CLUSTER_ID_RE.fullmatch(value):
        raise SpecError(f"cluster_id: {value!r} must be 1..63 characters of [A-Za-z0-9._-]")
    return value


OWNER_NAME_RE = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")  # DNS-1123 label (a namespace)
OWNER_OBJECT_RE = re.compile(  # DNS-1123 subdomain (an object name)
    r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*"
)


def check_owner(value: str) -> str:
    """The claiming TunnelEndpoint as "namespace/name": a DNS-1123 label, "/", a DNS-1123 subdomain
    of at most 253 characters; matched whole (no trailing newline slips through)."""
    ns, sep, name = value.partition("/")
    if (
        not sep
        or not OWNER_NAME_RE.fullmatch(ns)
        or len(name) > 253
        or not OWNER_OBJECT_RE.fullmatch(name)
    ):
        raise SpecError(f"owner: {value[:300]!r} must be \"namespace/name\" of a TunnelEndpoint (DNS-1123)")
    return value


def check_endpoint(value: str) -> str:
    """An IPv4 address or a DNS name."""
    try:
        IPv4Address(value)
        return value
    except ValueError:
        pass
    if not HOSTNAME_RE.fullmatch(value) or value.replace(".", "").isdigit():
        raise SpecError(f"endpoint: {value!r} is neither an IPv4 address nor a DNS name")
    return value


# Unicode categories refused in a cluster name: controls (C0, C1: newlines, \x0b, \x1c...), lone
# surrogates (not UTF-8), line and paragraph separators (U+2028, U+2029).
_NAME_REFUSED_CATEGORIES = frozenset({"Cc", "Cs", "Zl", "Zp"})


def check_cluster_name(value: str) -> str:
    """A display name: any Unicode text (the CRD allows it) of at most 63 characters, except quotes,
    backslashes and line-breaking or control characters. It never reaches the kernel as is: iptables
    comments carry an ASCII-safe form of it (`services.netagent.plan.natrules.comment_label`)."""
    if len(value) > MAX_NAME_LEN or any(
        c in "\"'\\" or unicodedata.category(c) in _NAME_REFUSED_CATEGORIES for c in value
    ):
        raise SpecError(
            "cluster_name: at most 63 characters; no double quotes, quotes, backslashes, newlines or"
            " other control or line-breaking characters"
        )
    return value


def chain_suffix(cluster_id: str) -> str:
    """Per-cluster chain suffix. Liqo used the ID's first dash-separated token, which collides for
    IDs sharing a prefix and overflows the 28-character chain limit for long IDs;
    a hash of the whole ID is fixed-length and collision-free in practice."""
    return hashlib.sha256(cluster_id.encode()).hexdigest()[:8]


@dataclass(frozen=True)
class TunnelSpec:
    cluster_id: str
    cluster_name: str
    local_pod_cidr: IPv4Network
    local_nat_pod_cidr: IPv4Network | None
    local_external_cidr: IPv4Network
    local_nat_external_cidr: IPv4Network | None
    remote_pod_cidr: IPv4Network
    remote_nat_pod_cidr: IPv4Network | None
    remote_external_cidr: IPv4Network
    remote_nat_external_cidr: IPv4Network | None
    endpoint: str
    endpoint_port: int
    public_key: str
    persistent_keepalive: int = 0  # seconds, 0 = off

    @staticmethod
    def parse(
        *,
        cluster_id: str,
        cluster_name: str = "",
        local_pod_cidr: str,
        local_nat_pod_cidr: str = "",
        local_external_cidr: str,
        local_nat_external_cidr: str = "",
        remote_pod_cidr: str,
        remote_nat_pod_cidr: str = "",
        remote_external_cidr: str,
        remote_nat_external_cidr: str = "",
        endpoint: str,
        endpoint_port: int,
        public_key: str,
        persistent_keepalive: int = 0,
    ) -> TunnelSpec:
        """Validates every field; raises SpecError on the first invalid one."""
        check_cluster_id(cluster_id)
        check_cluster_name(cluster_name)
        if not 1 <= endpoint_port <= 65535:
            raise SpecError(f"endpoint_port: {endpoint_port} not in 1..65535")
        if not 0 <= persistent_keepalive <= MAX_KEEPALIVE_SECONDS:
            raise SpecError(
                f"persistent_keepalive: {persistent_keepalive}s not in 0..{MAX_KEEPALIVE_SECONDS}"
            )

        def req(field: str, value: str) -> IPv4Network:
            net = parse_cidr(field, value)
            assert net is not None
            return net

        spec = TunnelSpec(
            cluster_id=cluster_id,
            cluster_name=cluster_name,
            local_pod_cidr=req("local_pod_cidr", local_pod_cidr),
            local_nat_pod_cidr=parse_cidr("local_nat_pod_cidr", local_nat_pod_cidr, optional=True),
            local_external_cidr=req("local_external_cidr", local_external_cidr),
            local_nat_external_cidr=parse_cidr(
                "local_nat_external_cidr", local_nat_external_cidr, optional=True
            ),
            remote_pod_cidr=req("remote_pod_cidr", remote_pod_cidr),
            remote_nat_pod_cidr=parse_cidr("remote_nat_pod_cidr", remote_nat_pod_cidr, optional=True),
            remote_external_cidr=req("remote_external_cidr", remote_external_cidr),
            remote_nat_external_cidr=parse_cidr(
                "remote_nat_external_cidr", remote_nat_external_cidr, optional=True
            ),
            endpoint=check_endpoint(endpoint),
            endpoint_port=endpoint_port,
            public_key=check_public_key("public_key", public_key),
            persistent_keepalive=persistent_keepalive,
        )
        spec._check_consistency()
        return spec

    def _check_consistency(self) -> None:
        if self.local_nat_pod_cidr and self.local_nat_pod_cidr.prefixlen != self.local_pod_cidr.prefixlen:
            raise SpecError(
                "local_nat_pod_cidr: must have the prefix length of local_pod_cidr (NETMAP is 1:1)"
            )
        if (
            self.local_nat_external_cidr
            and self.local_nat_external_cidr.prefixlen != self.local_external_cidr.prefixlen
        ):
            raise SpecError("local_nat_external_cidr: must have the prefix length of local_external_cidr")
        # Messages name the request field the effective CIDR comes from.
        pod_field = "remote_nat_pod_cidr" if self.remote_nat_pod_cidr else "remote_pod_cidr"
        ext_field = "remote_nat_external_cidr" if self.remote_nat_external_cidr else "remote_external_cidr"
        if self.eff_remote_pod_cidr.overlaps(self.eff_remote_external_cidr):
            raise SpecError(
                f"{pod_field}: {self.eff_remote_pod_cidr} overlaps {ext_field}"
                f" {self.eff_remote_external_cidr}"
                " (remote pod and external CIDRs, after remapping)"
            )
        for name, net in (
            (pod_field, self.eff_remote_pod_cidr),
            (ext_field, self.eff_remote_external_cidr),
        ):
            for lname, lnet in (
                ("local_pod_cidr", self.local_pod_cidr),
                ("local_external_cidr", self.local_external_cidr),
            ):
                if net.overlaps(lnet):
                    raise SpecError(
                        f"{name}: {net} (after remapping) overlaps {lname} {lnet}: set a NAT CIDR"
                    )
        if self.eff_remote_external_cidr.num_addresses < 4:
            raise SpecError(f"{ext_field}: needs at least 4 addresses (.1 is the probe address)")
        if self.local_remapped_external_cidr.num_addresses < 4:
            local_field = "local_nat_external_cidr" if self.local_nat_external_cidr else "local_external_cidr"
            raise SpecError(f"{local_field}: needs at least 4 addresses (.1 is the probe address)")

    # Effective CIDRs, as Liqo's utils define them.
    @property
    def eff_remote_pod_cidr(self) -> IPv4Network:
        """How we address the remote pods locally (R*)."""
        return self.remote_nat_pod_cidr or self.remote_pod_cidr

    @property
    def eff_remote_external_cidr(self) -> IPv4Network:
        """How we address the remote external CIDR locally (X*)."""
        return self.remote_nat_external_cidr or self.remote_external_cidr

    @property
    def local_remapped_external_cidr(self) -> IPv4Network:
        """How the remote addresses our external CIDR (E*)."""
        return self.local_nat_external_cidr or self.local_external_cidr

    @property
    def allowed_ips(self) -> tuple[IPv4Network, IPv4Network]:
        return (self.eff_remote_pod_cidr, self.eff_remote_external_cidr)

    @property
    def probe_target(self) -> IPv4Address:
        """The remote's probe address as we see it: the second address of X* (Liqo: `<X*>.1`)."""
        return self.eff_remote_external_cidr.network_address + 1

    @property
    def local_probe_address(self) -> IPv4Address:
        """Our probe address as the remote sees it: the second address of E*; DNATed to the tunnel IP."""
        return self.local_remapped_external_cidr.network_address + 1

    @property
    def chain_suffix(self) -> str:
        return chain_suffix(self.cluster_id)
