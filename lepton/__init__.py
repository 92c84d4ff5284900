"""The `lepton` command: runs the broker, producers, each service and the operator tools."""
