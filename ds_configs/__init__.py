"""The shipped DeepSpeed configs, installed as package data (`lrpt.ds_configs`) so that `lrpt plan --zero N`
and the benchmarks find them in any install; see `lrpt.trainer.config.ds_config.shipped`."""
