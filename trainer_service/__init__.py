"""The training service: a gRPC API that runs QLoRA SFT jobs, merges and verifies the result.

Not built yet; see DESIGN (trainer_service) for the contract it will implement.
"""
