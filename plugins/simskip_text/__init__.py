"""simskip text plugin."""
