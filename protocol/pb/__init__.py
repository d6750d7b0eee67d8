"""Generated gRPC stubs (proto/generate.py). Imported only by protocol/serde.py, the servicer,
the server factory and the party client."""
