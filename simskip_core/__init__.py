"""simskip core."""
