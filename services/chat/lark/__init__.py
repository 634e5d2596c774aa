"""lark-sink: post a message rendered from each event through a Lark/Feishu custom bot webhook."""
