"""Ocean-R1, reproduced."""
