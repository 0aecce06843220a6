"""The `none` security provider: no credentials, every action allowed (simulator)."""
