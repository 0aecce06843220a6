"""The TCP transport: frames over TCP sockets, optionally mutual TLS."""
