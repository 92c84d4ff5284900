"""Generated gRPC stubs for lepton.serving.v1 (run `python -m services.serving.gen_stubs`)."""
