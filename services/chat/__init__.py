"""Chat robots: slack-sink, dingtalk-sink, wecom-sink and lark-sink, sharing templates, pacing and the POST
seam in :mod:`services.chat.client` (each vendor's package adds only its API's request and answer)."""
