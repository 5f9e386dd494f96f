"""How good a model is, and why: evaluate, stress, external sets, the guard and explain stages,
and the recipe report."""
