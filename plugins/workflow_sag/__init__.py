"""The `sag` workflow: scatter-and-gather federated averaging (FedAvg).

Every round the server sends the global model to all sites, folds each
result into a weighted average as it arrives (FULL and DIFF results may mix),
saves the new global model and records the averaged metrics. Job options
(`workflow.options`): `task_timeout` (seconds, default 600), `task_name`
(default "train"), `min_responses` (results a round needs, default
`min_clients`).
"""
