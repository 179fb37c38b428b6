"""Frontends: models in (ONNX files and protos; PyTorch modules via export) -> Graph IR."""
