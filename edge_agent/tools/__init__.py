"""Tools: what agents and workflows act on."""
