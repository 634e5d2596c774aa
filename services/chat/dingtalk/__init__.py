"""dingtalk-sink: post a message rendered from each event through a DingTalk custom robot webhook."""
