"""The frozen backbone: presets, GGUF, loading, quantization and the sharded quantized load."""
