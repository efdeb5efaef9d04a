"""The QLoRA SFT recipe: spec -> preflight -> training -> merge and verification."""
