"""`python -m lepton` is the `lepton` command."""

from lepton.cli import main

main()
