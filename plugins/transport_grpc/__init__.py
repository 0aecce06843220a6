"""The gRPC transport: frames over one bidirectional gRPC stream per link, optionally mutual TLS."""
