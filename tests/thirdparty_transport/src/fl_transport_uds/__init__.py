"""The `uds` transport: fl-core frames over Unix domain sockets, shipped as its own package.

It depends on fl-core's public modules only (`fl_core.spec`, `fl_core.admission`,
`fl_core.errors`, ...) and is found through its `fl_core` entry point, like any
third-party plugin. A job picks it with `components: {transport: uds}`; a POC
with `fl-core poc prepare --transport uds`.
"""
