from runtime import main_for
from services.http.knative.connector import KnativeSink

main_for(KnativeSink)
