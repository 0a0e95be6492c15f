"""The model zoo for tenantd tests and demos.

``tiny.py`` builds small, real TFLite models directly as flatbuffers with no
TensorFlow: MLPs with known weights, a two-input/two-output model, an int8
quantized MLP, MLPs sized to a target weight footprint, and a model that
references an unknown custom op. ``zoo/`` builds the paper's workloads (MobileNetV2, Inception
V4, SSD-MobileNetV1/V2, cnn-trad-fpool3) and the compression cascade's trained digits pair as
ONNX, OpenVINO IR and TFLite (float32 and int8) files with metadata, into an ignored cache folder
(``python -m models build``; see :mod:`models.zoo`).
"""
