"""simskip kg plugin."""
