"""prometheus-source: scrape a PromQL query over time through the Prometheus query_range API."""
