"""A third-party Open Inference Protocol server for the tests: KServe's own model server
(the `kserve` SDK from PyPI) serving a victim checkpoint as a custom model.

    python -m tests.kserve_victim CHECKPOINT PORT [NAME]

It serves three models, as third-party servers lay them out: NAME (probabilities on UINT8 NHWC
pixels), NAME-nchw (probabilities on FP32 NCHW values in [0, 1], the layout of a model exported
from PyTorch) and NAME-label (an INT64 label, and nothing that says how many classes there are).
Only the models are ours (load the checkpoint, softmax of the logits); the routes, parsing,
binary tensor extension and encoding are KServe's. KServe's REST server binds
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
    def __init__(self, name: str, checkpoint: str, layout: str = "nhwc", output: str = "probs"):
        super().__init__(name)
        self.model, self.card = load_checkpoint(checkpoint)
        self.model.eval()
        self.layout, self.output = layout, output
        self.ready = True

    def get_input_types(self) -> list[dict]:
        size = self.card.input_size
        if self.layout == "nchw":
            return [{"name": "input-0", "datatype": "FP32", "shape": [-1, 3, size, size]}]
        return [{"name": "input-0", "datatype": "UINT8", "shape": [-1, size, size, 3]}]

    def get_output_types(self) -> list[dict]:
        if self.output == "label":
            return [{"name": "output-0", "datatype": "INT64", "shape": [-1, 1]}]
        return [{"name": "output-0", "datatype": "FP32", "shape": [-1, self.card.num_classes]}]

    def predict(self, payload: InferRequest, headers=None, response_headers=None) -> InferResponse:
        tensor = payload.inputs[0].as_numpy()
        if self.layout == "nchw":
            x = torch.from_numpy(np.array(tensor, dtype=np.float32))
        else:
            x = torch.from_numpy(np.array(tensor, dtype=np.uint8)).permute(0, 3, 1, 2).float() / 255
        with torch.no_grad():
            probs = torch.softmax(self.model(x).double(), dim=1).float().numpy()
        if self.output == "label":
            labels = probs.argmax(1).astype(np.int64).reshape(-1, 1)
            output = InferOutput("output-0", list(labels.shape), "INT64")
            output.set_data_from_numpy(labels, binary_data=False)
        else:
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
    models = [
        VictimModel(name, checkpoint),
        VictimModel(f"{name}-nchw", checkpoint, layout="nchw"),
        VictimModel(f"{name}-label", checkpoint, output="label"),
    ]
    ModelServer(http_port=port, enable_grpc=False, workers=1).start(models)


if __name__ == "__main__":
    main()
