"""One module per family of CLI commands; each command is a function taking its composed hydra config."""
