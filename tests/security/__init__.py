"""Tests of API keys: their sources, the key ring, and servers that require them."""
