"""Layer 9: the command line, `python -m kn026`: one module per command; no domain logic lives here."""
