"""A third-party Open Inference Protocol server for the tests: KServe's own model server
(the `kserve` SDK from PyPI) serving a victim checkpoint as a custom model.

    python -m tests.kserve_victim CHECKPOINT PORT [NAME]

Only the model is ours (load the checkpoint, softmax of the logits on UINT8 NHWC pixels); the
routes, parsing, binary tensor extension and encoding are KServe's. KServe's REST server binds
0.0.0.0 with no option to change it; this helper pins it to 127.0.0.1 before it starts, so that
the test's server listens on loopback only. gRPC is off.
"""

from __future__ import annotations

import sys

import numpy as np
import torch
from kserve import InferOutput, InferRequest, InferResponse, Model, ModelServer
from kserve.protocol.rest import server as rest_server

from shared.checkpoint import load_checkpoint


class VictimModel(Model):
    def __init__(self, name: str, checkpoint: str) -> None:
        super().__init__(name)
        self.model, self.card = load_checkpoint(checkpoint)
        self.model.eval()
        self.ready = True

    def get_input_types(self) -> list[dict]:
        size = self.card.input_size
        return [{"name": "input-0", "datatype": "UINT8", "shape": [-1, size, size, 3]}]

    def get_output_types(self) -> list[dict]:
        return [{"name": "output-0", "datatype": "FP32", "shape": [-1, self.card.num_classes]}]

    def predict(self, payload: InferRequest, headers=None, response_headers=None) -> InferResponse:
        pixels = payload.inputs[0].as_numpy()
        x = torch.from_numpy(np.array(pixels, dtype=np.uint8)).permute(0, 3, 1, 2).float() / 255
        with torch.no_grad():
            probs = torch.softmax(self.model(x).double(), dim=1).float().numpy()
        output = InferOutput("output-0", list(probs.shape), "FP32")
        output.set_data_from_numpy(probs, binary_data=False)
        return InferResponse(payload.id, self.name, [output], use_binary_outputs=True)


def _loopback_only() -> None:
    original = rest_server.RESTServer.__init__

    def init(self, *args, **kwargs) -> None:
        original(self, *args, **kwargs)
        self.config.host = "127.0.0.1"

    rest_server.RESTServer.__init__ = init


def main() -> None:
    checkpoint, port = sys.argv[1], int(sys.argv[2])
    name = sys.argv[3] if len(sys.argv) > 3 else "victim"
    sys.argv = sys.argv[:1]  # KServe parses the command line itself
    _loopback_only()
    ModelServer(http_port=port, enable_grpc=False, workers=1).start([VictimModel(name, checkpoint)])


if __name__ == "__main__":
    main()
