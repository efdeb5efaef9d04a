"""The training service. `recipe/` is the QLoRA SFT recipe (`tunesmith train run`): spec,
chat format and preflight, training, merge and verification. The gRPC service that runs it
as durable jobs is not built yet.
"""
