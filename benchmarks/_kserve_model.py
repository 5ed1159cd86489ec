"""KServe's own Python model server (`kserve` on PyPI) serving an ONNX model with ONNX Runtime: the peer that
benchmarks/serve_bench.py measures `floatedge serve` against. Same session settings as floatedge's runtime
(one intra-op thread, sequential, all graph optimisations). Written against kserve's documented custom-model API
(`kserve.Model.predict(InferRequest) -> InferResponse`, `kserve.ModelServer().start([model])`).

    python benchmarks/_kserve_model.py MODEL.onnx NAME HTTP_PORT GRPC_PORT
"""
from __future__ import annotations

import sys

import kserve
import onnxruntime as ort
from kserve import InferOutput, InferRequest, InferResponse


class OnnxModel(kserve.Model):
    def __init__(self, name: str, path: str) -> None:
        super().__init__(name)
        self.path = path
        self.load()

    def load(self) -> bool:
        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(self.path, so, providers=["CPUExecutionProvider"])
        self.ready = True
        return self.ready

    def predict(self, payload: InferRequest, headers=None, response_headers=None) -> InferResponse:
        x = payload.inputs[0].as_numpy()
        logits = self.session.run(["logits"], {"images": x})[0]
        out = InferOutput(name="logits", shape=list(logits.shape), datatype="FP32")
        out.set_data_from_numpy(logits, binary_data=payload.use_binary_outputs if hasattr(payload, "use_binary_outputs")
                                else True)
        return InferResponse(model_name=self.name, infer_outputs=[out], response_id=payload.id)


if __name__ == "__main__":
    path, name, http_port, grpc_port = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    kserve.ModelServer(http_port=http_port, grpc_port=grpc_port, workers=1).start([OnnxModel(name, path)])
