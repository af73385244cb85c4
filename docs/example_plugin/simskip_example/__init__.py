"""A minimal third-party simskip plugin (see docs/plugins.md)."""
