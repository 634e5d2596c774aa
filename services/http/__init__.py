"""HTTP: http-source, http-sink and knative-sink; the sinks share the delivery in :mod:`services.http.client`."""
