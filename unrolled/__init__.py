"""Inner problems as `metaopt.UnrolledSystem`s (influence balancing, toy regression, digits MLP, ...)."""
