"""file-source: tail files line by line."""
