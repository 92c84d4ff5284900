"""Generated gRPC stubs of lepton.serving.v1 (see services/serving/gen_stubs.py)."""
