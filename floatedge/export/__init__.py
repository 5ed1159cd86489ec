"""Export to a deployable bundle (workstation side) and the static form (device side).

This package must import without torch: the device imports `floatedge.export.static` and
`floatedge.export.graph`. Only `floatedge.export.torch_export` (and `verify` when given a run
directory) needs torch, and nothing here imports it at module level.

* `floatedge.bundle` — the bundle schema, checksums, `open_bundle` (torch-free, not in this package).
* `floatedge.export.static` — `static_model`, `refit_weights`, `plain_model` (torch-free).
* `floatedge.export.torch_export` — `export_bundle(run_dir, out, ...)` (torch).
* `floatedge.export.verify` — `verify_bundle(path, run_dir=None)`.
"""
