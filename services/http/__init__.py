"""HTTP: http-source, chatgpt-source, http-sink and knative-sink; the sources share the intake in
:mod:`services.intake`, the sinks the delivery in :mod:`services.http.client`."""
