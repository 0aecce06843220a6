"""The `pki` security provider: startup kits, mutual TLS bound to names, rights, site policy."""
