"""wechat-sink: send a WeChat official-account template message for each event."""
