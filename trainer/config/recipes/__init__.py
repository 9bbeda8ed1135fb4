"""The shipped recipes (one YAML file per paper setting), installed as package data (`lrpt.trainer.config.recipes`);
see `lrpt.trainer.config.recipe`."""
