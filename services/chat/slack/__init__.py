"""slack-sink: post a message rendered from each event to a Slack channel (chat.postMessage)."""
