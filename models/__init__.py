"""The model zoo for tenantd tests and demos.

``tiny.py`` builds small, real TFLite models directly as flatbuffers with no
TensorFlow: MLPs with known weights, a two-input/two-output model, an int8
quantized MLP, MLPs sized to a target weight footprint, and a model that
references an unknown custom op.
"""
