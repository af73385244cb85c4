"""simskip graph plugin."""
