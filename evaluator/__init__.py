"""The evaluator: serves a model OpenAI-compatibly (`serving`), measures it against its base
model (assistant-only perplexity, usability, judged win rate), gates and reports (`run`), and
compares forms of one model (`compare`)."""
