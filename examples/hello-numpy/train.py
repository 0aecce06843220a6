"""hello-numpy: each site adds a known delta to every array it receives.

Site N adds N, and every site reports the same number of samples, so each
round the global model grows by the mean of 1..K (K sites): after R rounds
from zeros, every entry is exactly R * (K + 1) / 2.
"""

import fl_core.client as flare

flare.init()
site = flare.get_site_name()
delta = float(site.rsplit("-", 1)[1])

while flare.is_running():
    model = flare.receive()
    if model is None:
        break
    params = {name: array + delta for name, array in model.params.items()}
    flare.log("delta", delta, step=model.current_round)
    flare.send(
        flare.FLModel(
            params=params,
            metrics={"delta": delta},
            meta={"num_samples": 10},
        )
    )
