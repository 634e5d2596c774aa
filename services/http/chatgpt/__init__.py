"""chatgpt-source: ask an OpenAI-compatible chat model about texts POSTed over HTTP, publish the answers."""
