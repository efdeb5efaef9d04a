"""The evaluator: serves merged models OpenAI-compatibly and measures them against the base.

Not built yet; see DESIGN (evaluator) for the metrics and the promotion gate it will own.
"""
