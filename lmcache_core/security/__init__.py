"""API keys: where they come from, how a server checks them, how a client sends one."""
