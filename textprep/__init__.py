"""textprep."""
