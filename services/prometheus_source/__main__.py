from runtime import main_for
from services.prometheus_source.connector import PrometheusSource

main_for(PrometheusSource)
