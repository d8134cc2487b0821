"""The sandbox's standard pair of clusters, as the demo and the end-to-end tests peer them: both use
10.0.0.0/16 for pods, so each reaches the other's pods and external CIDR through remapped ones."""

from __future__ import annotations

from sandbox.testkit.cluster.peering import Remap

__all__ = ["A_SEES_B", "B_SEES_A", "EXPORTED_B", "POD_A", "POD_A_FROM_B", "POD_B", "POD_B_FROM_A", "POD_CIDR"]

POD_CIDR = "10.0.0.0/16"
POD_A, POD_B = "10.0.1.5", "10.0.2.7"  # a pod in cluster A, one in cluster B
A_SEES_B = Remap(pod="10.60.0.0/16", external="10.70.0.0/16")
B_SEES_A = Remap(pod="10.80.0.0/16", external="10.90.0.0/16")
POD_B_FROM_A, POD_A_FROM_B = "10.60.2.7", "10.80.1.5"  # each pod as the other cluster reaches it
EXPORTED_B = "10.70.0.7"  # B's NatMapping exports its pod as this address of the CIDR A uses for B
