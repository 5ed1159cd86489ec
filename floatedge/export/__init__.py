"""Export to a deployable bundle (workstation side).

* `floatedge.export.torch_export` — `export_bundle(run_dir, out, ...)` (torch).
* `floatedge.export.verify` — `verify_bundle(path, run_dir=None)` (torch only with a run directory).
* `floatedge.export.cli` — `floatedge export | inspect | verify | static`.

The bundle schema is `floatedge.bundle`, the graph surgery and the static form are `floatedge.graph` (both
torch-free, used by the device side too). Nothing here imports torch at module level, so `inspect`,
`verify` (checksums) and `static` run on a device.
"""
