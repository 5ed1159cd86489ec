"""Torch-free ONNX graph code shared by the workstation (`floatedge.export`) and the device side
(`floatedge.runtime`, `floatedge.devices`, `floatedge.daemon`).

* `floatedge.graph.scalable` — the runtime-scalable graph: the λ subgraph, `W + s·α·η` per noisy layer, a
  `Where` per dual-BN parameter (`make_scalable`), and the helpers that read a graph's initializers.
* `floatedge.graph.static` — the static form at one operating point (`static_model`, `refit_weights`,
  `plain_model`, `freeze`).

It sits below `export/` (which builds the graph from a torch model) and below `runtime/` (which runs it), so
neither has to import the other. Nothing here imports torch.
"""
