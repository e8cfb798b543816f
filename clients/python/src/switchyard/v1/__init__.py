"""Generated stubs for the switchyard.v1 contract (regenerate with `make proto`)."""
