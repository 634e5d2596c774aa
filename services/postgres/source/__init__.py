"""postgres-source: stream row changes by logical decoding (pgoutput)."""
