"""A whole study from one YAML: config, stage cache, stages, runner, report."""
