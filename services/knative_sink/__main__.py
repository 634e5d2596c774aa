from runtime.app import main_for
from services.knative_sink.connector import KnativeSink

main_for(KnativeSink)
