"""The WireGuard key pair all gateway replicas share, in a Secret compatible with Liqo's.

Secret `wireguard-pubkey` (by default) in POD_NAMESPACE, label `net.liqo.io/key=wireguard` (the body
is `services.common.keys.secret_body`). Created race-safely: every replica tries to create it; the
losers of the race (409) read the winner's. The private key is never logged nor put in an exception
message.
"""

from __future__ import annotations

import logging

from services.common.keys import KeyPair, generate, parse_secret, secret_body
from services.common.kube.client import KubeClient, KubeError
from services.common.vocabulary import KEY_SECRET, SECRETS

log = logging.getLogger(__name__)


def ensure_key_secret(client: KubeClient, namespace: str, name: str = KEY_SECRET) -> KeyPair:
    """Reads the shared key pair, creating it first if absent. Raises KubeError on API failures
    (retry) and KeySecretError when an existing Secret is unusable (an operator must fix it)."""
    try:
        return parse_secret(client.get(SECRETS, name, namespace))
    except KubeError as e:
        if not e.not_found:
            raise
    pair = generate()
    try:
        client.create(SECRETS, secret_body(name, pair), namespace)
        log.info("created the WireGuard key Secret", extra={"secret": f"{namespace}/{name}",
                                                           "public_key": pair.public_key})
        return pair
    except KubeError as e:
        if not e.conflict:
            raise
    # Another replica won the race: use its key pair, so all replicas share one.
    return parse_secret(client.get(SECRETS, name, namespace))
