"""neuralnum: learning least-squares algorithms to machine precision."""
