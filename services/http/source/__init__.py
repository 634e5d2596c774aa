"""http-source: receive CloudEvents and JSON webhooks over HTTP."""
