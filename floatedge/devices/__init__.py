"""Know the Jetson you run on: identity, capabilities, live telemetry, simulated devices (docs/devices.md).

Standard library and numpy only; never imports torch, and the runtime never imports this package.

* `catalogue` (+ `catalogue.json`): the modules, JetPack lines and nvpmodel modes, a cited source per fact;
* `identity`: which module, L4T/JetPack, CUDA, TensorRT, sm, DLA, precisions; `jetson_identity` for engine keys;
* readers over an injectable root: `power`, `thermal`, `gpu`, `cpu`, `memory`, `nvpmodel`; `throttle` infers;
* `tegrastats`: the parser for every format from JetPack 3 to 7.2; `sampler`: `Snapshot`s on one thread;
* `simulate` (+ `scenarios/`): simulated Jetsons and timelines to play on them; `cli`: `floatedge device …`.
"""
