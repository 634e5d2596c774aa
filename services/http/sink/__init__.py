"""http-sink: POST events to HTTP endpoints as CloudEvents."""
