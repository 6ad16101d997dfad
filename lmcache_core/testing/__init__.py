"""Test helpers and conformance checks for the core and for plugin authors."""
