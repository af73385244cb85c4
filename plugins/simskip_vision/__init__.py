"""simskip vision plugin."""
