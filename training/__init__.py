"""Training and evaluation of the bundled compact NLI model (not part of the service)."""
