"""Deployment: the predictor (numpy + ONNX Runtime), test-time views, ONNX export, INT8, medseg-predict."""
