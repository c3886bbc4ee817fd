"""Pure request checks; every check fails closed."""
