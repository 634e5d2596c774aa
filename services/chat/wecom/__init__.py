"""wecom-sink: post a message rendered from each event through a WeCom group robot webhook."""
