"""Generated gRPC stubs of lepton.serving.v1 and inference (OIP v2); see services/serving/gen_stubs.py."""
