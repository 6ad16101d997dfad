"""Storage: object keys, the L1 memory tier, eviction and (later) the L2 controllers."""
