"""What production's PKI certifies, and where a startup kit keeps it.

`fl_core.pki.identity` says who a certificate names and which cells that
name may be (`grant_refusal`); `fl_core.pki.kit` is the layout of a startup
kit and reads its credentials as strictly as `fl_core.credentials` reads a
POC's secrets. `fl_core.provision` writes both; the `pki` security provider
and `fl-core start` read them.
"""
