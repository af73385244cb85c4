"""Hook implementations of the vision plugin."""
