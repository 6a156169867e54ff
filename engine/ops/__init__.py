"""Plans: one class per op, created once (validate, choose, transform weights), run many times."""
