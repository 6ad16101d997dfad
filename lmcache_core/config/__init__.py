"""Configuration models, one per flag group of the configuration reference."""
