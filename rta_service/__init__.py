"""The online RTA decision service: device IDs -> Redis -> features -> ONNX model -> policy -> answer."""

__version__ = "0.1.0"
