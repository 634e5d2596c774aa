"""knative-sink: POST events to a Knative service or broker as binary-mode CloudEvents."""
