"""Generated protobuf code (``make protos``); committed so users need no grpcio-tools."""
