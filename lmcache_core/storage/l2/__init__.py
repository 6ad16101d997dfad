"""The L2 tier: the adapter contract, the object format, and (later) the controllers."""
