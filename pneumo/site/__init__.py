"""A new site: calibrate on its labelled sample, adapt to its unlabelled stream."""
