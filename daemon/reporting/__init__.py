"""Learning-curve plots and the periodic report (read-only over the state dir)."""
