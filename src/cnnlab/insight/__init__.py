"""Inside a trained net: feature maps, kernels and attributions (`cnnlab explain`), and its
ONNX export (`cnnlab export-model`)."""
