"""Small helpers shared by several packages (each module has one job)."""
