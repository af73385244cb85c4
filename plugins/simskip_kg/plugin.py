"""Hook implementations of the kg plugin."""
