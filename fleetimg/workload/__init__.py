"""Running the fleet's workloads: batch inference slices, Horovod across boards, K3s manifests."""
