"""The gRPC front of the training service: servicer, auth, health, metrics, lifecycle."""
