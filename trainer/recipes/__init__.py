"""The shipped recipes (one YAML file per paper setting), installed as package data (`lrpt.trainer.recipes`);
see `lrpt.trainer.recipe`."""
