"""Hook implementations of the graph plugin."""
