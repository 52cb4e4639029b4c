"""Data in: the built-in drift scenarios, the cooling-fan recordings, a user's lab files."""
