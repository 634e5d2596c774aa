"""file-sink: write events as CloudEvents JSON lines."""
